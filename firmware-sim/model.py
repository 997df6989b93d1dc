"""The drive model: one physically consistent vehicle state, stepped at a fixed dt.

A point-mass longitudinal model (mass, aerodynamic drag, rolling resistance,
engine torque/power limits, engine braking, brakes) follows a scenario's
target speed with acceleration and jerk limits; everything else is derived
from it, so the signals agree with each other:

- odometer and route position integrate speed (trapezoidal rule);
- GPS lat/lon/heading are the point at that distance along the route;
- lateral acceleration = v^2 * curvature, yaw rate = v * curvature, steering
  wheel angle = steering ratio * atan(wheelbase * curvature) (bicycle model);
- engine rpm = wheel speed * gear ratio * final drive once the torque
  converter is locked (above 25 km/h), idle/slip speed below; the automatic
  gearbox shifts on rpm thresholds that rise with the accelerator pedal;
- accelerator pedal = engine torque needed / torque available; brake pedal
  and pressure from the deceleration the engine and drag do not provide;
- fuel is used at idle rate plus engine power / efficiency, cut while coasting;
- coolant and oil temperatures warm up from ambient with a time constant that
  shrinks with load; the level of fuel falls with consumption.

Impacts (a scenario's `Impact`s) override the driver: for the impact's
duration the speed goes linearly to the impact's end speed (no jerk limit, so
`accel_long` is the crash pulse, e.g. -150 m/s^2), while the pedals stay where
the driver had them (a crash is not the driver braking). Afterwards the driver
has the car again, with the held brake (if any) acting at once. For an impact
that `deploys`, the airbag control unit sets `crash_detected` `ACU_DETECT_S`
after the impact begins and fires the driver's airbag (the passenger's too if
a passenger is present) `AIRBAG_FIRE_S` after it; both stay set and the airbag
lamp stays on. The engine control unit cuts fuel on the crash signal (the DBC
routes CrashDetected to the ECM), so the engine stops; the ignition stays ON.

All randomness comes from `random.Random` instances seeded from `seed`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields

from .route import Route
from .scenarios import STARTUP_S, Impact, Phase, Scenario, SpeedProfile, get_scenario

# vehicle constants (a mid-size petrol car with a 6-speed automatic)
MASS_KG = 1500.0
CDA_M2 = 0.66  # drag coefficient x frontal area
AIR_DENSITY = 1.2
ROLLING_RESISTANCE = 0.012
G = 9.81
WHEEL_RADIUS_M = 0.32
FINAL_DRIVE = 3.2
GEAR_RATIOS = (4.17, 2.34, 1.52, 1.14, 0.87, 0.69)
DRIVELINE_EFFICIENCY = 0.9
MAX_TORQUE_NM = 250.0
MAX_POWER_W = 110_000.0
IDLE_RPM = 750.0
WHEELBASE_M = 2.7
STEERING_RATIO = 15.0
TANK_L = 50.0
LOCKUP_KMH = 25.0  # torque converter locks above this speed
BRAKE_FULL_DECEL = 9.5  # m/s^2 at 100 % brake pedal
BRAKE_BAR_PER_MS2 = 12.0

# start-up timeline (seconds since ignition on)
CRANK_AT = 0.5
ENGINE_RUNS_AT = 1.2
BELT_AT = 0.9
BRAKE_PRESSED_AT = 1.8
DRIVE_AT = 2.2
AIRBAG_LAMP_TEST_S = 4.0

# airbag control unit: delays after the beginning of a deploying impact
ACU_DETECT_S = 0.015  # crash_detected
AIRBAG_FIRE_S = 0.025  # airbags deployed
STALL_TAU_S = 0.15  # time constant of the engine running down after the fuel cut

# VSS Transmission.SelectedGear codes
PARK = 126
DRIVE = 127

# VSS LowVoltageSystemState names, coded as in the demo DBC's IgnitionState
IGNITION_CODES = {"OFF": 0, "ACC": 1, "ON": 2, "START": 3, "LOCK": 4}

MAX_ROUTE_M = 250_000.0


def rpm_for(speed_kmh: float, gear: int) -> float:
    """Engine speed when the driveline is locked in `gear` at `speed_kmh`."""
    if gear < 1:
        return 0.0
    wheel_rps = speed_kmh / 3.6 / (2.0 * math.pi * WHEEL_RADIUS_M)
    return wheel_rps * 60.0 * GEAR_RATIOS[gear - 1] * FINAL_DRIVE


@dataclass(slots=True)
class VehicleState:
    """The car at one instant. Treat as read-only."""

    t: float  # seconds since ignition on
    speed_kmh: float
    accel_long: float  # m/s^2, forward positive (ISO 8855 X)
    accel_lat: float  # m/s^2, left positive (ISO 8855 Y)
    yaw_rate: float  # degrees/s, counter-clockwise positive
    engine_rpm: float
    engine_running: bool
    engine_torque: float  # Nm, negative while engine braking
    engine_load: float  # percent
    throttle: float  # percent
    map_kpa: float  # intake manifold absolute pressure
    gear: int  # engaged gear: 0 neutral/park, 1..6
    selected_gear: int  # selector lever, VSS codes: 126 park, 127 drive
    shift_in_progress: bool
    converter_locked: bool
    accel_pedal: float  # percent
    brake_pedal: float  # percent
    brake_switch: bool
    brake_pressure: float  # bar
    abs_active: bool
    steering_angle: float  # steering wheel, degrees, left positive
    steering_speed: float  # degrees/s
    coolant_temp: float  # celsius
    oil_temp: float  # celsius
    intake_temp: float  # celsius
    ambient_temp: float  # celsius
    baro_kpa: float
    fuel_level: float  # percent of tank
    fuel_rate: float  # l/h
    odometer_km: float
    distance_m: float  # since the start of this drive, along the route
    engine_hours: float
    lat: float
    lon: float
    heading: float  # degrees clockwise from north
    altitude: float  # m
    gps_speed: float  # km/h
    gps_satellites: int
    gps_fix: int  # 0 none, 1 2D, 2 3D
    ignition: str  # VSS LowVoltageSystemState: OFF, ACC, ON, START
    battery_voltage: float
    driver_belted: bool
    passenger_belted: bool
    passenger_present: bool
    driver_airbag_deployed: bool
    passenger_airbag_deployed: bool
    crash_detected: bool
    airbag_lamp: bool

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DriveModel:
    """Steps the vehicle state of one drive at a fixed `dt`.

    `state` is the state at `t = steps * dt`; `step()` advances by one dt.
    """

    def __init__(
        self,
        scenario: "str | Scenario" = "city",
        seed: int = 0,
        dt: float = 0.01,
        duration: float | None = None,
        route: Route | None = None,
    ):
        self.scenario = get_scenario(scenario)
        self.seed = seed
        self.dt = float(dt)
        duration = self.scenario.default_duration if duration is None else float(duration)
        self._rng = random.Random(f"{seed}/model")
        driver_rng = random.Random(f"{seed}/driver")
        route_rng = random.Random(f"{seed}/route")
        if route is None and self.scenario.round_trip_m:
            route = Route.round_trip(self.scenario.route_kind, self.scenario.round_trip_m, route_rng)
        elif route is None:
            length = min(MAX_ROUTE_M, duration * self.scenario.max_speed_kmh / 3.6 * 1.1 + 1000.0)
            route = Route.generate(self.scenario.route_kind, length, route_rng)
        self.route = route
        self.profile = SpeedProfile(self.scenario.phases(driver_rng))
        self._build_speed_limits()

        rng = self._rng
        # initial conditions
        self._ambient = round(rng.uniform(4.0, 24.0), 1)
        self._baro = round(95.0 + rng.uniform(-1.5, 1.5), 1)
        self._coolant = self._ambient + rng.uniform(0.0, 3.0)
        self._oil = self._ambient + rng.uniform(0.0, 2.0)
        self._fuel_l = TANK_L * rng.uniform(0.35, 0.9)
        self._odo = round(rng.uniform(8_000.0, 90_000.0), 2)
        self._hours = round(self._odo / rng.uniform(30.0, 45.0), 2)
        self._sats = rng.randint(8, 12)
        self._altitude0 = 519.0
        self._t = 0.0
        self._steps = 0
        self._s = 0.0
        self._v = 0.0
        self._a_cmd = 0.0
        self._a = 0.0
        self._gear = 0
        self._last_shift = -10.0
        self._pedal = 0.0
        self._steer = self._steering_for(self.route.curvature(0.0))
        # impacts as (first step, number of steps, impact); a step k covers ((k - 1) dt, k dt]
        self._impacts = [
            (round(imp.at / self.dt), max(1, round(imp.duration / self.dt)), imp)
            for imp in sorted(self.scenario.impacts, key=lambda imp: imp.at)
        ]
        self._pre_impact: VehicleState | None = None  # the state when the current impact began
        self._impact_v0 = 0.0  # and its speed, m/s
        self._crash_at: float | None = None  # when a deploying impact began
        self._stalled = False
        self.state = self._snapshot(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False)

    # -- route speed limits ----------------------------------------------------

    _LIMIT_STEP = 2.0
    _COMFORT_DECEL = 1.8

    def _build_speed_limits(self) -> None:
        """Fastest speed (m/s) at each 2 m of route for the scenario's lateral limit,
        made reachable with comfortable braking (backward pass)."""
        n = int(self.route.length_m / self._LIMIT_STEP) + 2
        lat = self.scenario.lateral_limit
        lim = []
        for i in range(n):
            k = abs(self.route.curvature(i * self._LIMIT_STEP))
            lim.append(math.sqrt(lat / k) if k > 1e-6 else 70.0)
        if self.route.destination:  # the drive ends there: stop at the last waypoint
            lim[-1] = lim[-2] = 0.0
        two_a_ds = 2.0 * self._COMFORT_DECEL * self._LIMIT_STEP
        for i in range(n - 2, -1, -1):
            reach = math.sqrt(lim[i + 1] * lim[i + 1] + two_a_ds)
            if reach < lim[i]:
                lim[i] = reach
        self._limits = lim

    def _speed_limit(self, s: float) -> float:
        i = int(s / self._LIMIT_STEP)
        if 0 <= i < len(self._limits):
            return self._limits[i]
        return 0.0 if self.route.destination else 70.0

    @staticmethod
    def _steering_for(kappa: float) -> float:
        return math.degrees(math.atan(WHEELBASE_M * kappa)) * STEERING_RATIO

    # -- physics helpers -------------------------------------------------------

    @staticmethod
    def _resistance_accel(v: float) -> float:
        """Deceleration from drag and rolling resistance (negative), m/s^2."""
        if v <= 0.0:
            return 0.0
        return -(0.5 * AIR_DENSITY * CDA_M2 * v * v + MASS_KG * G * ROLLING_RESISTANCE) / MASS_KG

    def _max_accel(self, v: float, gear: int) -> float:
        """Largest acceleration the engine can give in `gear` at speed v (m/s)."""
        gear = max(1, gear)
        rpm = max(IDLE_RPM, rpm_for(v * 3.6, gear))
        omega = rpm * 2.0 * math.pi / 60.0
        torque = min(MAX_TORQUE_NM, MAX_POWER_W / omega)
        force = torque * GEAR_RATIOS[gear - 1] * FINAL_DRIVE * DRIVELINE_EFFICIENCY / WHEEL_RADIUS_M
        return force / MASS_KG + self._resistance_accel(v)

    # -- stepping --------------------------------------------------------------

    def step(self) -> VehicleState:
        dt = self.dt
        self._steps += 1
        t = self._steps * dt
        self._t = t
        phase, target_kmh = self.profile.at(t)
        v = self._v
        in_drive = t >= DRIVE_AT

        # gearbox (decides on the speed at the start of the step)
        speed_kmh = v * 3.6
        pedal_prev = self._pedal
        selected = DRIVE if in_drive else PARK
        gear = self._gear
        shifting = False
        if selected == PARK:
            gear = 0
        else:
            if gear == 0 or speed_kmh < 3.0:
                gear = 1
            else:
                now_rpm = rpm_for(speed_kmh, gear)
                settled = t - self._last_shift > 0.8
                up_rpm = 1700.0 + 25.0 * pedal_prev
                if settled and gear < 6 and now_rpm > up_rpm and rpm_for(speed_kmh, gear + 1) >= 1050.0:
                    gear += 1
                elif gear > 1 and (now_rpm < 850.0 or (settled and now_rpm < (1150.0 if pedal_prev > 50.0 else 1000.0))):
                    gear -= 1
                elif settled and gear > 1 and pedal_prev >= 95.0 and rpm_for(speed_kmh, gear - 1) < 4500.0:
                    gear -= 1  # kickdown
            if gear != self._gear and self._gear != 0:
                self._last_shift = t
        if t - self._last_shift < 0.3:
            shifting = True
        self._gear = gear

        # longitudinal: an impact, or the driver following min(target, bend limit ahead)
        pulse = self._pulse(self._steps)
        if pulse is None:
            if not in_drive or t < STARTUP_S or self._stalled:
                target_kmh = 0.0  # a car whose engine died is brought to a stop
            v_new = self._driver(phase, target_kmh, v, gear)
        else:
            v_new = self._impact(pulse, v)
        a = (v_new - v) / dt
        ds = (v + v_new) * 0.5 * dt
        self._s += ds
        self._odo += ds / 1000.0
        self._v = v = v_new
        speed_kmh = v * 3.6

        # engine
        if self._crash_at is not None and t >= self._crash_at + ACU_DETECT_S:
            self._stalled = True  # the ECM cuts fuel on the ACU's crash signal
        running = t >= ENGINE_RUNS_AT and not self._stalled
        cold = min(1.0, max(0.0, (60.0 - self._coolant) / 60.0))
        idle = IDLE_RPM + 300.0 * cold
        wheel_rpm = rpm_for(speed_kmh, gear)
        locked = running and gear >= 1 and speed_kmh > LOCKUP_KMH and wheel_rpm >= 900.0
        if self._stalled:
            rpm = self.state.engine_rpm * math.exp(-dt / STALL_TAU_S)
            if rpm < 50.0:
                rpm = 0.0
        elif not running:
            rpm = 250.0 if t >= CRANK_AT else 0.0
        else:
            flare = 550.0 * math.exp(-(t - ENGINE_RUNS_AT) / 0.8)
            if locked:
                rpm = wheel_rpm
            else:
                rpm = max(wheel_rpm, idle + flare + 12.0 * pedal_prev)

        # forces, pedals, torque
        res = self._resistance_accel(v)
        force = MASS_KG * (a - res)  # what the driveline (+) or brakes/engine braking (-) must provide
        ratio = GEAR_RATIOS[gear - 1] * FINAL_DRIVE if gear >= 1 else 0.0
        omega = rpm * 2.0 * math.pi / 60.0
        t_avail = min(MAX_TORQUE_NM, MAX_POWER_W / omega) if omega > 1.0 else MAX_TORQUE_NM
        brake_decel = 0.0
        if not running:
            torque = 0.0
            pedal = 0.0
        elif v <= 0.0 and a <= 0.0:
            torque = 12.0 if gear >= 1 else 5.0  # idle, converter load in D
            pedal = 0.0
        elif force > 0.0 and ratio > 0.0:
            torque = min(t_avail, force * WHEEL_RADIUS_M / (ratio * DRIVELINE_EFFICIENCY))
            pedal = 100.0 * torque / t_avail
        else:
            pedal = 0.0
            t_brake = -(10.0 + rpm / 200.0) if (ratio > 0.0 and v > 3.0) else 0.0
            f_engine_min = t_brake * ratio * DRIVELINE_EFFICIENCY / WHEEL_RADIUS_M if ratio > 0.0 else 0.0
            if force >= f_engine_min:
                torque = force * WHEEL_RADIUS_M / (ratio * DRIVELINE_EFFICIENCY) if ratio > 0.0 else 0.0
            else:
                torque = t_brake
                brake_decel = (f_engine_min - force) / MASS_KG
        self._pedal = pedal

        brake_pedal = min(100.0, 100.0 * brake_decel / BRAKE_FULL_DECEL)
        pressure = brake_decel * BRAKE_BAR_PER_MS2
        if v <= 0.0 and BRAKE_PRESSED_AT <= t and pedal == 0.0 and running:
            brake_pedal = max(brake_pedal, 30.0 if t < STARTUP_S else 22.0)  # holding the car in D
            pressure = max(pressure, 18.0)
        abs_active = brake_decel > 7.0 and v > 1.0
        if pulse is not None:  # the pedals stay where the driver had them
            pre = self._pre_impact
            if running:
                torque, pedal = pre.engine_torque, pre.accel_pedal
                self._pedal = pedal
            brake_pedal, pressure, abs_active = pre.brake_pedal, pre.brake_pressure, pre.abs_active

        load_frac = max(0.0, torque) / t_avail if running else 0.0
        load = min(100.0, 15.0 + 85.0 * load_frac) if running else 0.0

        # fuel
        if not running:
            fuel_rate = 0.0
        elif torque < 0.0 and rpm > 1100.0:
            fuel_rate = 0.0  # deceleration fuel cut-off
        else:
            power_kw = max(0.0, torque) * omega / 1000.0
            fuel_rate = 0.75 * (1.0 + 0.4 * cold) + power_kw / (0.28 * 8.9)
        self._fuel_l = max(0.0, self._fuel_l - fuel_rate / 3600.0 * dt)

        # temperatures
        if running:
            tau = 260.0 / (0.6 + 1.5 * load_frac + rpm / 3000.0)
            self._coolant += (90.0 + 4.0 * load_frac - self._coolant) * dt / tau
            self._oil += (95.0 + 12.0 * load_frac - self._oil) * dt / (1.8 * tau)
            self._hours += dt / 3600.0
        else:
            self._coolant += (self._ambient - self._coolant) * dt / 1800.0
            self._oil += (self._ambient - self._oil) * dt / 2400.0

        # lateral
        kappa = self.route.curvature(self._s)
        steer = self._steering_for(kappa)
        steer_speed = (steer - self._steer) / dt
        self._steer = steer
        return self._commit(
            t, a, v * v * kappa, math.degrees(v * kappa), rpm, torque, load, pedal, brake_pedal, pressure,
            abs_active, gear, selected, shifting, locked, running, fuel_rate, steer_speed, cold,
        )

    def _driver(self, phase: Phase, target_kmh: float, v: float, gear: int) -> float:
        """The driver's speed at the end of this step (m/s): the target speed
        reached within the phase's acceleration and jerk limits."""
        dt = self.dt
        if target_kmh <= 0.0:
            if v <= 0.0:
                a_des = 0.0
            elif phase.decel >= 6.0 or v > 2.0:
                a_des = -phase.decel
            else:
                a_des = -max(0.8, phase.decel * v / 2.0)
        else:
            a_des = 0.5 * (target_kmh / 3.6 - v)
            bend = self._speed_limit(self._s + v * 0.5)
            if bend < v + 1.0:  # slowing for a bend ahead
                a_des = min(a_des, 2.0 * (bend - v))
        a_max = self._max_accel(v, gear)
        a_des = max(-phase.decel, min(a_des, phase.accel, a_max))
        dj = phase.jerk * dt
        a_cmd = self._a_cmd + max(-dj, min(dj, a_des - self._a_cmd))
        a_cmd = min(a_cmd, a_max)  # traction is physics, not the driver's choice
        if v <= 0.0 and a_cmd < 0.0:
            a_cmd = 0.0
        v_new = v + a_cmd * dt
        if v_new <= 0.0:
            v_new = 0.0
            a_cmd = 0.0
        self._a_cmd = a_cmd
        return v_new

    def _pulse(self, step: int) -> tuple[Impact, int, int] | None:
        """(impact, steps done including this one, steps in all) if `step` lies in an impact."""
        for first, n, imp in self._impacts:
            if first < step <= first + n:
                return imp, step - first, n
        return None

    def _impact(self, pulse: tuple[Impact, int, int], v: float) -> float:
        """The speed at the end of this step of an impact (m/s): linear from the
        speed when it began to its end speed."""
        imp, done, n = pulse
        if done == 1:
            self._pre_impact = self.state
            self._impact_v0 = v
            if imp.deploys and self._crash_at is None:
                self._crash_at = imp.at
        v0, v1 = self._impact_v0, imp.to_kmh / 3.6
        v_new = v0 + (v1 - v0) * done / n if done < n else v1
        if done == n:  # hand back to the driver: a held brake acts at once
            pre = self._pre_impact
            held = pre.brake_pedal / 100.0 * BRAKE_FULL_DECEL if pre.brake_switch else 0.0
            self._a_cmd = -held if v_new > 0.0 else 0.0
        return v_new

    def _commit(self, t, a, a_lat, yaw, rpm, torque, load, pedal, brake_pedal, pressure, abs_active, gear,
                selected, shifting, locked, running, fuel_rate, steer_speed, cold) -> VehicleState:
        st = self._snapshot(t, a, a_lat, yaw, rpm, torque, load, pedal, running)
        st.engine_torque = torque
        st.engine_load = load
        st.throttle = min(100.0, 4.0 + 0.9 * pedal) if running else 0.0
        st.map_kpa = min(self._baro, 30.0 + 70.0 * max(0.0, load - 15.0) / 85.0) if running else self._baro
        st.gear = gear
        st.selected_gear = selected
        st.shift_in_progress = shifting
        st.converter_locked = locked
        st.brake_pedal = brake_pedal
        st.brake_switch = brake_pedal > 0.5
        st.brake_pressure = pressure
        st.abs_active = abs_active
        st.steering_speed = steer_speed
        st.fuel_rate = fuel_rate
        st.intake_temp = self._ambient + 4.0 + 0.08 * (self._coolant - self._ambient) * (1.0 - cold * 0.5)
        self.state = st
        return st

    def _snapshot(self, t, a, a_lat, yaw, rpm, torque, load, pedal, running) -> VehicleState:
        pos = self.route.position(self._s)
        if self._steps % 1000 == 0 and self._rng.random() < 0.3:  # satellites come and go
            self._sats = max(6, min(14, self._sats + self._rng.choice((-1, 1))))
        if t < CRANK_AT:
            ignition, volts = "ON", 12.5
        elif t < ENGINE_RUNS_AT:
            ignition, volts = "START", 10.4
        elif not running:  # stalled: the alternator stops
            ignition, volts = "ON", 12.4
        else:
            ignition, volts = "ON", 14.2 - 0.3 * load / 100.0
        crashed = self._crash_at is not None and t >= self._crash_at + ACU_DETECT_S
        fired = self._crash_at is not None and t >= self._crash_at + AIRBAG_FIRE_S
        passenger = False  # the scenarios drive alone
        return VehicleState(
            t=t,
            speed_kmh=self._v * 3.6,
            accel_long=a,
            accel_lat=a_lat,
            yaw_rate=yaw,
            engine_rpm=rpm,
            engine_running=running,
            engine_torque=torque,
            engine_load=load,
            throttle=0.0,
            map_kpa=self._baro,
            gear=self._gear,
            selected_gear=PARK,
            shift_in_progress=False,
            converter_locked=False,
            accel_pedal=pedal,
            brake_pedal=0.0,
            brake_switch=False,
            brake_pressure=0.0,
            abs_active=False,
            steering_angle=self._steer,
            steering_speed=0.0,
            coolant_temp=self._coolant,
            oil_temp=self._oil,
            intake_temp=self._ambient + 4.0,
            ambient_temp=self._ambient,
            baro_kpa=self._baro,
            fuel_level=100.0 * self._fuel_l / TANK_L,
            fuel_rate=0.0,
            odometer_km=self._odo,
            distance_m=self._s,
            engine_hours=self._hours,
            lat=pos.lat,
            lon=pos.lon,
            heading=pos.heading,
            altitude=self._altitude0 + 4.0 * math.sin(self._s / 700.0),
            gps_speed=self._v * 3.6,
            gps_satellites=self._sats,
            gps_fix=2,
            ignition=ignition,
            battery_voltage=volts,
            driver_belted=t >= BELT_AT,
            passenger_belted=False,
            passenger_present=passenger,
            driver_airbag_deployed=fired,
            passenger_airbag_deployed=fired and passenger,
            crash_detected=crashed,
            airbag_lamp=t < AIRBAG_LAMP_TEST_S or fired,
        )

    def run(self, duration: float):
        """Yield the state at t = 0, dt, 2 dt, ... while t < duration."""
        n = int(round(duration / self.dt))
        yield self.state
        for _ in range(n - 1):
            yield self.step()
