"""The dispenser: one asyncio task per concern, wired to a board (real or simulated).

Tasks: doses (the state machine, woken by the planner, never polling), carousel (moves, one at
a time, journaled), alerts (light and tone), buttons (and the beam), display, health (mains,
battery), supervisor (feeds the watchdog only while every critical task is alive).
Every wait goes through the board's clock, so the simulator can run this same code faster than
real time. Events (dose phases, faults, care-team notices) go to `emit(kind, occ, detail)`:
the log and the links subscribe there.
"""

import asyncio
import gc

from dispenser import carousel as carousel_mod
from dispenser.alerts import Alerts
from dispenser.buttons import Buttons
from dispenser.ds3231 import DS3231
from dispenser.stepper import Stepper
from dispenser.store import Journal
from dosiscore import civil, doses, planner, timesrc, tz

_IRQ_RISING = 1  # machine.Pin.IRQ_RISING on the ESP32 (and on the simulated pins)
_PRN_SHOW_S = 15  # how long the answer to an as-needed request stays on the screen
_STATE_KINDS = (
    "taken",
    "missed",
    "skipped",
    "notify",
    "filled",
    "mode",
    "prn",
    "available",
    "refill",
    "empty",
)
_TERMINAL = (doses.TAKEN, doses.MISSED, doses.SKIPPED)
_TAKEN_SHOW_S = 60
_SAVE_SEEN_S = 900  # at most 4 state writes an hour while nothing happens
_HEALTH_S = 10
_LOW_BATTERY_MV = 3500
_BATTERY_OK_MV = 3700

FAULT_KEYS = {
    "E1": "jam",
    "E2": "home",
    "E3": "time",
    "E4": "beam",
    "E5": "battery",
    "E6": "empty",
    "E7": "button",
    "E8": "display",
    "E9": "storage",
}


class _Unplugged:
    """An output that does nothing: the light and the buzzer once the app holds for service."""

    def value(self, v=None):
        return 0

    def freq(self, hz=None):
        return 0

    def duty_u16(self, d=None):
        return 0


class App:
    def __init__(self, board, doc, store, emit, lang=None, state=None, log=None):
        self.board = board
        self.clock = board.clock
        self.store = store
        self.emit_fn = emit
        self.doc = doc
        self.lang = lang or doc["language"]
        self.zone = tz.Tz(doc["tz_rule"])
        now = self.clock.now() if self.clock.valid() else None
        saved = store.load("doses.json") if state is None else state
        self.doses = doses.Doses(doc, saved, now)
        self.alerts = Alerts(board.led, board.buzzer, self.clock)
        self.buttons = Buttons(board.btn_taken, board.btn_service, self.clock, board.flag())
        stepper = Stepper(board.coils, board.step_delay_ms)
        self.carousel = carousel_mod.Carousel(
            stepper, board.home, board.beam, Journal(store), compartments=doc["compartments"]
        )
        self.display = board.display
        self.kick = asyncio.Event()  # wakes the doses task
        self.move_wake = asyncio.Event()
        self.alert_wake = asyncio.Event()
        self.disp_wake = asyncio.Event()
        self.want = None  # carousel target: ("open", k, occ) or ("closed", None, None)
        self.faults = {}  # code -> detail, while active
        self.prn_answer = None  # (allowed, at, until)
        self.notice = None  # ("taken" | "missed", data, until): what just happened
        self.last_screen = ("idle", {})
        self.log = log  # the dose log (None in degraded mode)
        self.log_lost = [0]  # records the log could not take (heap); set by runtime.start
        self.service = False
        self.alive = {}  # task name -> clock ticks of its last check-in
        self.dead = []  # names of tasks that ended with an exception
        self.mains = None
        self.battery_low = False
        self.moves = 0
        self.ready = False  # the carousel is calibrated
        self.moving = False
        self._saved_at = 0
        self.timefilter = timesrc.StepFilter()
        self.beam_flag = board.flag()
        try:
            board.beam.irq(handler=self._beam_isr, trigger=_IRQ_RISING)
        except AttributeError:
            pass

    # -- events ----------------------------------------------------------------------------

    def emit(self, kind, occ=None, detail=""):
        self.emit_fn(kind, occ, detail)

    def _events(self, events):
        changed = False
        for kind, occ, detail in events:
            self.emit(kind, occ, detail)
            # Only what changes the stored dose state costs a flash write (wear budget:
            # at most 100 syncs an hour); "louder" and the like are derived from the time.
            changed = changed or kind in _STATE_KINDS
            if kind in ("taken", "missed") and occ is not None:
                # What just happened stays on the screen: "taken" for a minute, "missed"
                # until the next dose opens or someone presses the button.
                now = self.clock.now()
                hold = _TAKEN_SHOW_S if kind == "taken" else 12 * 3600
                self.notice = (kind, {"time": self._hhmm(occ[0])}, now + hold)
            if kind == "empty":
                self.fault("E6", "carousel empty")
            elif kind == "filled":
                self.clear_fault("E6")
        if changed:
            self.store.save("doses.json", self.doses.state())
            self._saved_at = self.doses.last_seen or 0
        if events:
            self.disp_wake.set()

    def fault(self, code, detail):
        if code not in self.faults:
            self.faults[code] = detail
            self.emit("fault", None, "%s %s" % (code, detail))
            self.disp_wake.set()

    def clear_fault(self, code):
        if code in self.faults:
            del self.faults[code]
            self.emit("fault_cleared", None, code)
            self.disp_wake.set()

    def blocked(self):
        """True while a carousel fault forbids any motion (no retry that grinds the gears)."""
        return "E1" in self.faults or "E2" in self.faults or "E4" in self.faults

    def check_in(self, name):
        self.alive[name] = self.clock.ticks_ms()

    # -- the doses task -----------------------------------------------------------------------

    def _apply_view(self):
        v = self.doses.view
        occ = v["occ"]
        phase = None
        if occ is not None:
            phase = "available" if v["phase"] == doses.AVAILABLE else "due"
        self.alerts.set(phase, v["level"])
        self.alert_wake.set()
        k = v["compartment"]
        if occ is not None and k is not None and self.ready and not self.blocked():
            want = ("open", k, occ)
        else:
            want = ("closed", None, None)
        if want != self.want:
            self.want = want
            self.move_wake.set()
        self.disp_wake.set()

    async def doses_task(self):
        while True:
            self.check_in("doses")
            if not self.clock.valid():
                # No trustworthy time: dispense nothing, say so, wait for a time source.
                self.fault("E3", "time missing")
                self.alerts.set(None, 0)
                self.alert_wake.set()
                await self.clock.wait(self.kick, self.board.heartbeat_s)
                self.kick.clear()
                continue
            self.clear_fault("E3")
            now = self.clock.now()
            events = self.doses.update(now)
            if events:
                # Light and tone first, then the flash writes (log, state): on the device a
                # littlefs sync can take tens of ms, and the citizen must not wait for it.
                self._apply_view()
                active = self.doses.active
                await self.clock.sleep(0)
                if active is not None and self.doses.active != active:
                    # The button or the beam ended it meanwhile (its "taken" is logged
                    # already): what update() said about it (available, due...) is stale.
                    events = [e for e in events if e[1] != active or e[0] in _TERMINAL]
            self._events(events)
            if now - self._saved_at > _SAVE_SEEN_S or now < self._saved_at:
                # Keep "last seen" fresh on flash, so a later boot can tell a dose missed
                # while the device was off ("unseen") from one it showed ("late").
                self.store.save("doses.json", self.doses.state())
                self._saved_at = now
            self._apply_view()
            wake = self.doses.next_wake(now)
            # Aim at the instant itself (milliseconds), so a tone starts on time, not up to a
            # second late; never less than 1 ms, never longer than the heartbeat.
            wait = min(max(0.001, wake - self.clock.now_ms() / 1000), self.board.heartbeat_s)
            if self.clock.changed.is_set():
                self.clock.changed.clear()
                continue
            await self.clock.wait(self.kick, wait)
            self.kick.clear()

    def offer_time(self, utc, source, trusted=False, origin=None):
        """A time source answered (NTP, the nurse's tool). Steps over 120 s need a second
        source to agree unless the source is trusted; the DS3231 follows every accepted step.
        Returns True if the clock was set."""
        cur = self.clock.now() if self.clock.valid() else None
        new = self.timefilter.offer(
            cur, utc, self.clock.ticks_ms() // 1000, source, trusted, origin
        )
        if new is None:
            self.emit(
                "clock_held",
                None,
                "%s %+d s: waiting for a second source" % (source, utc - (cur or 0)),
            )
            return False
        old, new = self.clock.set(new, source)
        try:
            DS3231(self.board.i2c).write(new)
        except OSError:
            self.fault("E3", "rtc not answering")
        self.on_clock_change(old, new, source)
        return True

    def on_clock_change(self, old, new, source):
        self.emit("clock", None, "%s %s %s" % (old, new, source))
        self.kick.set()

    # -- carousel ----------------------------------------------------------------------------

    async def carousel_task(self):
        self.check_in("carousel")
        try:
            rec = await self.carousel.recover()
            if rec and rec.get("was") == "moving":
                self.emit("recovered", None, "moving to %s" % rec.get("target"))
            self.ready = True
        except carousel_mod.CarouselFault as e:
            self.fault(e.code, str(e))
        self.kick.set()
        while True:
            self.check_in("carousel")
            want = self.want
            if want is not None and self.ready and not self.blocked():
                try:
                    await self._move(want)
                except carousel_mod.CarouselFault as e:
                    self.fault(e.code, str(e))
                    self.emit("jam" if e.code == "E1" else "carousel_fault", None, e.code)
            if want == self.want:
                gc.collect()  # an idle point, never mid-move
                await self.clock.wait(self.move_wake, None)
                self.move_wake.clear()

    async def _move(self, want):
        kind, k, occ = want
        key = doses.occ_key(occ[0], occ[1]) if occ else None
        self.moving = True
        try:
            if kind == "open":
                if self.carousel.at_compartment() == k:
                    return
                # A filled compartment must break the beam when it reaches the opening: if it
                # does not, the carousel did not get there (jam, slip) or it is empty.
                verify = self.board.beam_verify and self.doses.fill is not None
                await self.carousel.goto_compartment(k, key, verify)
                self.moves += 1
                self.emit("opened", occ, "compartment %d" % k)
            else:
                if self.carousel.is_closed():
                    return
                await self.carousel.close(key)
                self.moves += 1
                self.emit("closed", None, "")
        finally:
            self.moving = False

    # -- alerts, buttons, display, health, supervisor ----------------------------------------

    async def alerts_task(self):
        while True:
            self.check_in("alerts")
            await self.alerts.cycle(self.alert_wake)

    async def buttons_task(self):
        while True:
            self.check_in("buttons")
            press = await self.buttons.next_press()
            if not self.clock.valid():
                self.emit("press", None, press + " ignored: time missing")
                continue
            now = self.clock.now()
            self.notice = None  # any press acknowledges what the screen was saying
            if press == "taken":
                ev = self.doses.taken(now, "button")
                if not ev:
                    self.emit("press", None, "taken: nothing due")
                self._events(ev)
                self._apply_view()
            elif press == "prn":
                allowed, at, ev = self.doses.prn_request(now)
                self._events(ev)
                self.prn_answer = (allowed, at, now + _PRN_SHOW_S)
                self.disp_wake.set()
            elif press == "service":
                self.service = not self.service
                self.emit("service", None, "on" if self.service else "off")
                self.disp_wake.set()
            elif press == "stuck":
                self.fault("E7", "button held down")
            self.kick.set()

    def _beam_isr(self, _pin):
        self.beam_flag.set()  # interrupt context: a flag and nothing else

    async def beam_task(self):
        """The beam clears at an open compartment: the pills were taken out."""
        while True:
            self.check_in("beam")
            await self.clock.wait(self.beam_flag, None)
            if hasattr(self.beam_flag, "clear"):
                self.beam_flag.clear()
            want = self.want
            if (
                not self.moving
                and want is not None
                and want[0] == "open"
                and self.carousel.at_compartment() == want[1]
                and self.board.beam.value() == 1
                and self.clock.valid()
            ):
                self._events(self.doses.taken(self.clock.now(), "beam"))
                self._apply_view()

    def next_dose(self, now):
        """(utc, dose id) of the next dose the device will offer: not one already given that
        day before a schedule change moved it (see Doses.done_that_day)."""
        nd = planner.next_due(self.doses.plan, now)
        for _ in range(8):
            if nd is None or not self.doses.done_that_day(nd[0], nd[1]):
                return nd
            nd = planner.next_due(self.doses.plan, nd[0] + 1)
        return nd

    def _hhmm(self, utc):
        wall = self.zone.local(utc)
        return civil.format_hhmm((wall % civil.DAY) // 60)

    def screen(self):
        """(screen name, data) for what the citizen should see now; formatted here."""
        if self.service:
            return "service", {"text": self.board.name}
        # Faults that stop dispensing come first; the others show when nothing is due.
        for code in ("E1", "E2", "E4", "E7"):
            if code in self.faults:
                return "fault", {"code": code, "key": FAULT_KEYS.get(code, "fault")}
        if not self.clock.valid():
            return "time_missing", {}
        now = self.clock.now()
        v = self.doses.view
        occ = v["occ"]
        if occ is not None:
            d = self.doses.dose(occ[1])
            if d["reminder_only"]:
                return "reminder", {"name": d["items"][0]["name"], "time": self._hhmm(occ[0])}
            if v["compartment"] is None:
                return "refill", {"left": 0}  # due, but nothing to dispense it from
            if v["phase"] == doses.AVAILABLE:
                return "available", {
                    "compartment": v["compartment"],
                    "dose": occ[1],
                    "time": self._hhmm(occ[0]),
                }
            return "due", {
                "compartment": v["compartment"],
                "time": self._hhmm(occ[0]),
                "late": now >= occ[0] + 60 * d["notify_min"],
            }
        if self.notice is not None and now < self.notice[2]:
            return self.notice[0], dict(self.notice[1])
        if self.prn_answer is not None and now < self.prn_answer[2]:
            allowed, at, _ = self.prn_answer
            rule = self.doc["prn"][0]["name"] if self.doc["prn"] else ""
            return "prn", {
                "allowed": allowed,
                "name": rule,
                "next": None if allowed or at is None else self._hhmm(at),
            }
        if "E6" in self.faults:
            return "refill", {"left": 0}
        for code in ("E9", "E8"):
            if code in self.faults:
                return "fault", {"code": code, "key": FAULT_KEYS.get(code, "fault")}
        left = self.doses.doses_left(now)
        if left is not None and left <= doses.REFILL_WARN:
            return "refill", {"left": left}
        if self.doses.mode in ("paused", "travel"):
            return "paused", {"until": None}
        wall = self.zone.local(now)
        z = wall // civil.DAY
        y, m, d = civil.civil_from_days(z)
        nd = self.next_dose(now)
        return "idle", {
            "clock": civil.format_hhmm((wall % civil.DAY) // 60),
            "date": "%d/%d" % (d, m),
            "weekday": civil.weekday(z),
            "next": self._hhmm(nd[0]) if nd else None,
        }

    async def display_task(self):
        while True:
            self.check_in("display")
            name, data = self.screen()
            if self.display is not None:
                try:
                    self.display.show(name, data, self.lang)
                    self.clear_fault("E8")
                except OSError as e:  # the panel or its bus: show nothing, keep reminding
                    self.fault("E8", "display %s" % e)
            self.last_screen = (name, data)
            if self.log is not None:
                self.log.service()  # an idle point: deferred log records reach the flash
            # Redraw at the next minute (the clock) or when something changes.
            wait = 60
            if self.clock.valid():
                wait = 60 - self.clock.now() % 60
            await self.clock.wait(self.disp_wake, wait)
            self.disp_wake.clear()

    async def health_task(self):
        while True:
            self.check_in("health")
            mains = self.board.mains.value()
            if mains != self.mains:
                if self.mains is not None:
                    self.emit("mains", None, "restored" if mains else "lost")
                self.mains = mains
            mv = self.board.battery_mv()
            if not self.battery_low and mv < _LOW_BATTERY_MV and not mains:
                self.battery_low = True
                self.fault("E5", "battery low %d mV" % mv)
            elif self.battery_low and (mv > _BATTERY_OK_MV or mains):
                self.battery_low = False
                self.clear_fault("E5")
            await self.clock.sleep(_HEALTH_S)

    async def supervisor_task(self, wdt):
        """Feed the watchdog only while every task lives and the dose task keeps checking
        in: a crashed task or a stalled loop ends in a reset, never a silent device."""
        told = False
        limit = (self.board.heartbeat_s + 30) * 1000
        while True:
            last = self.alive.get("doses")
            late = last is not None and self.clock.ticks_ms() - last > limit
            if not self.dead and not late:
                wdt.feed()
            elif not told:
                told = True
                why = ",".join(self.dead) if self.dead else "doses task silent"
                self.emit("fault", None, "watchdog will reset: %s" % why)
            await self.clock.sleep(2)

    async def hold_for_service(self):
        """Stop dispensing for a technician (the `service` command, docs/protocol.md).

        Refuses, changing nothing, while a dose is open (available or due: its light, tone
        and compartment must not stop half-way) or the carousel moves: returns why. Else it
        stops every further move, closes the carousel if it is open (unless a carousel fault
        forbids motion), puts out the light and the tone, shows the service screen and saves
        the dose state; returns None. The caller then leaves the event loop: the tasks never
        run again, and only a reset starts the app again."""
        occ = self.doses.view["occ"]
        want = self.want
        if occ is not None or (want is not None and want[0] == "open"):
            if occ is None:
                return "a compartment is open: try again once it has closed"
            return "dose %s is open (%s): try again once it is taken or locked" % (
                occ[1],
                self._hhmm(occ[0]),
            )
        if self.moving:
            return "the carousel is moving: try again in a few seconds"
        may_move = self.ready and not self.blocked()
        self.ready = False  # the carousel task starts no move from now on
        self.want = ("closed", None, None)
        self.alerts.set(None, 0)
        self.alerts.quiet()
        # Until the loop stops the alerts task may still cycle (a dose due meanwhile): it
        # drives nothing any more, so the light and the tone stay off.
        self.alerts.led = self.alerts.buzzer = _Unplugged()
        if may_move and not self.carousel.is_closed():
            self.moving = True
            try:
                await self.carousel.close()
                self.moves += 1
                self.emit("closed", None, "service")
            except carousel_mod.CarouselFault as e:  # logged; the technician is there
                self.fault(e.code, str(e))
            finally:
                self.moving = False
        self.service = True
        self.last_screen = ("service", {"text": "REPL"})
        if self.display is not None:
            try:
                self.display.show("service", {"text": "REPL"}, self.lang)
            except OSError:
                pass
        self.store.save("doses.json", self.doses.state())
        return None

    async def _guard(self, name, coro):
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a task boundary: turn it into a fault, stop feeding the dog
            self.dead.append(name)
            self.emit("fault", None, "%s crashed: %s %s" % (name, type(e).__name__, e))
        finally:
            if hasattr(self.clock, "register"):
                self.clock.register(-1)  # the simulator's warp must not wait for it any more

    def start(self):
        """Create the tasks; returns them (the caller owns the loop)."""
        wdt = self.board.watchdog(8000)
        self.wdt = wdt  # the service hand-over feeds it (main.py): it cannot be stopped
        tasks = []
        for name, coro in (
            ("doses", self.doses_task()),
            ("carousel", self.carousel_task()),
            ("alerts", self.alerts_task()),
            ("buttons", self.buttons_task()),
            ("beam", self.beam_task()),
            ("display", self.display_task()),
            ("health", self.health_task()),
            ("supervisor", self.supervisor_task(wdt)),
        ):
            tasks.append(asyncio.create_task(self._guard(name, coro)))
        return tasks
