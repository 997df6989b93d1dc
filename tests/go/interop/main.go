// Command interop checks carledger's transparency formats with Go's own
// golang.org/x/mod/sumdb/note and sumdb/tlog packages (Debian's
// golang-golang-x-mod-dev), offline: tests/test_transparency_interop.py
// sends one JSON request on stdin and reads one JSON answer on stdout.
//
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build -o interop ./tests/go/interop
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type request struct {
	VKeys      []string      `json:"vkeys"`       // note verifier keys (Ed25519, type 0x01)
	CosigVKeys []string      `json:"cosig_vkeys"` // cosignature/v1 verifier keys (type 0x04)
	Notes      []string      `json:"notes"`       // signed notes to open
	Records    []recordCheck `json:"records"`
	Trees      []treeCheck   `json:"trees"`
	Leaves     []string      `json:"leaves"` // base64 records: Go builds its own log of them
	Sizes      []int64       `json:"sizes"`  // tree sizes Go proves everything for
	Sign       *signRequest  `json:"sign"`
}

type recordCheck struct {
	Size  int64    `json:"size"`
	Root  string   `json:"root"`
	Index int64    `json:"index"`
	Leaf  string   `json:"leaf_hash"`
	Proof []string `json:"proof"`
}

type treeCheck struct {
	Size    int64    `json:"size"`
	Root    string   `json:"root"`
	OldSize int64    `json:"old_size"`
	OldRoot string   `json:"old_root"`
	Proof   []string `json:"proof"`
}

type signRequest struct {
	SKey      string `json:"skey"`       // note signer key, PRIVATE+KEY+...
	CosigSeed string `json:"cosig_seed"` // base64 Ed25519 seed of a cosignature/v1 signer
	CosigName string `json:"cosig_name"`
	CosigTime uint64 `json:"cosig_time"`
	Text      string `json:"text"`
}

type openResult struct {
	Err        string   `json:"err,omitempty"`
	Text       string   `json:"text"`
	Sigs       []string `json:"sigs"`
	Unverified []string `json:"unverified"`
}

type sizeProofs struct {
	Size    int64      `json:"size"`
	Root    string     `json:"root"`
	Records [][]string `json:"records"` // proof of each index < size
	Trees   [][]string `json:"trees"`   // proof from each old size 1..size
}

type response struct {
	Notes   []openResult `json:"notes"`
	Records []string     `json:"records"` // "" for a proof that verifies, else Go's error
	Trees   []string     `json:"trees"`
	Proofs  []sizeProofs `json:"proofs"`
	Signed  string       `json:"signed,omitempty"`
}

// cosigV1 is a cosignature/v1 verifier and signer written here from
// c2sp.org/tlog-cosignature, independently of carledger's Python.
type cosigV1 struct {
	name string
	hash uint32
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	time uint64
}

func cosigKeyHash(name string, pub []byte) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', 0x04})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

func cosigMessage(text []byte, t uint64) []byte {
	return append([]byte("cosignature/v1\ntime "+strconv.FormatUint(t, 10)+"\n"), text...)
}

func (c *cosigV1) Name() string    { return c.name }
func (c *cosigV1) KeyHash() uint32 { return c.hash }
func (c *cosigV1) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > 1<<63-1 {
		return false
	}
	return ed25519.Verify(c.pub, cosigMessage(msg, t), sig[8:])
}
func (c *cosigV1) Sign(msg []byte) ([]byte, error) {
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], c.time)
	return append(ts[:], ed25519.Sign(c.priv, cosigMessage(msg, c.time))...), nil
}

func newCosigVerifier(vkey string) (note.Verifier, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("malformed cosignature key %q", vkey)
	}
	key, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(key) != 33 || key[0] != 0x04 {
		return nil, fmt.Errorf("malformed cosignature key %q", vkey)
	}
	c := &cosigV1{name: parts[0], pub: ed25519.PublicKey(key[1:])}
	c.hash = cosigKeyHash(c.name, c.pub)
	if fmt.Sprintf("%08x", c.hash) != parts[1] {
		return nil, fmt.Errorf("cosignature key %q: key id mismatch", vkey)
	}
	return c, nil
}

func hashes(in []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(in))
	for i, s := range in {
		h, err := tlog.ParseHash(s)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

func strs(in []tlog.Hash) []string {
	out := make([]string, len(in))
	for i, h := range in {
		out[i] = h.String()
	}
	return out
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func run(req request) (response, error) {
	var resp response
	var verifiers []note.Verifier
	for _, k := range req.VKeys {
		v, err := note.NewVerifier(k)
		if err != nil {
			return resp, fmt.Errorf("vkey %q: %v", k, err)
		}
		verifiers = append(verifiers, v)
	}
	for _, k := range req.CosigVKeys {
		v, err := newCosigVerifier(k)
		if err != nil {
			return resp, err
		}
		verifiers = append(verifiers, v)
	}
	known := note.VerifierList(verifiers...)
	for _, msg := range req.Notes {
		r := openResult{Sigs: []string{}, Unverified: []string{}}
		n, err := note.Open([]byte(msg), known)
		if err != nil {
			r.Err = err.Error()
		} else {
			r.Text = n.Text
			for _, s := range n.Sigs {
				r.Sigs = append(r.Sigs, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
			}
			for _, s := range n.UnverifiedSigs {
				r.Unverified = append(r.Unverified, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
			}
		}
		resp.Notes = append(resp.Notes, r)
	}
	for _, c := range req.Records {
		proof, err := hashes(c.Proof)
		if err == nil {
			var root, leaf tlog.Hash
			if root, err = tlog.ParseHash(c.Root); err == nil {
				if leaf, err = tlog.ParseHash(c.Leaf); err == nil {
					err = tlog.CheckRecord(proof, c.Size, root, c.Index, leaf)
				}
			}
		}
		resp.Records = append(resp.Records, errText(err))
	}
	for _, c := range req.Trees {
		proof, err := hashes(c.Proof)
		if err == nil {
			var root, old tlog.Hash
			if root, err = tlog.ParseHash(c.Root); err == nil {
				if old, err = tlog.ParseHash(c.OldRoot); err == nil {
					err = tlog.CheckTree(proof, c.Size, root, c.OldSize, old)
				}
			}
		}
		resp.Trees = append(resp.Trees, errText(err))
	}
	if len(req.Leaves) > 0 {
		var stored []tlog.Hash
		reader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
			out := make([]tlog.Hash, len(idx))
			for i, x := range idx {
				out[i] = stored[x]
			}
			return out, nil
		})
		for i, b := range req.Leaves {
			data, err := base64.StdEncoding.DecodeString(b)
			if err != nil {
				return resp, err
			}
			hs, err := tlog.StoredHashes(int64(i), data, reader)
			if err != nil {
				return resp, err
			}
			stored = append(stored, hs...)
		}
		for _, size := range req.Sizes {
			root, err := tlog.TreeHash(size, reader)
			if err != nil {
				return resp, err
			}
			p := sizeProofs{Size: size, Root: root.String()}
			for i := int64(0); i < size; i++ {
				rp, err := tlog.ProveRecord(size, i, reader)
				if err != nil {
					return resp, err
				}
				p.Records = append(p.Records, strs(rp))
			}
			for old := int64(1); old <= size; old++ {
				tp, err := tlog.ProveTree(size, old, reader)
				if err != nil {
					return resp, err
				}
				p.Trees = append(p.Trees, strs(tp))
			}
			resp.Proofs = append(resp.Proofs, p)
		}
	}
	if req.Sign != nil {
		var signers []note.Signer
		if req.Sign.SKey != "" {
			s, err := note.NewSigner(req.Sign.SKey)
			if err != nil {
				return resp, err
			}
			signers = append(signers, s)
		}
		if req.Sign.CosigSeed != "" {
			seed, err := base64.StdEncoding.DecodeString(req.Sign.CosigSeed)
			if err != nil || len(seed) != ed25519.SeedSize {
				return resp, fmt.Errorf("bad cosignature seed")
			}
			priv := ed25519.NewKeyFromSeed(seed)
			pub := priv.Public().(ed25519.PublicKey)
			signers = append(signers, &cosigV1{name: req.Sign.CosigName, hash: cosigKeyHash(req.Sign.CosigName, pub), pub: pub, priv: priv, time: req.Sign.CosigTime})
		}
		msg, err := note.Sign(&note.Note{Text: req.Sign.Text}, signers...)
		if err != nil {
			return resp, err
		}
		resp.Signed = string(msg)
	}
	return resp, nil
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "interop: bad request:", err)
		os.Exit(2)
	}
	resp, err := run(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		os.Exit(1)
	}
}
