"""Light and sound: the graduated alert, driven from the dose view (a task of the app).

Stages: available -> the light only (steady); due -> the light blinks and the buzzer beeps,
one level louder every `louder_every_min` (levels 1..4). The tone is the user's setting:
"normal" (2700 Hz, the piezo's loudest) or "low" (1900 Hz, for high-frequency hearing loss).
A beep cycle is 0.5 s on, 1.5 s off, so the pattern stays distinguishable from a fault chirp.
"""

from micropython import const

# PWM duty for the four volume levels (a piezo's loudness grows with duty up to 50 %).
_DUTY = (0, 2000, 6000, 16000, 32768)
TONES = {"normal": 2700, "low": 1900}
_ON_S = 0.5
_OFF_S = 1.5
_FAULT_CHIRP_HZ = const(1000)


class Alerts:
    def __init__(self, led, buzzer, clock, volume=4, tone="normal"):
        self.led = led
        self.buzzer = buzzer
        self.clock = clock
        self.volume = volume  # the highest level the user allows (1..4)
        self.tone = tone
        self.phase = None  # None, "available" or "due"
        self.level = 0
        self.sounding = False
        self.beeps = 0  # counted for tests and benchmarks
        self.buzzer.duty_u16(0)
        self.led.value(0)

    def set(self, phase, level):
        """Desired stage from the dose view; the alert task picks it up on its next cycle."""
        self.phase = phase
        self.level = min(level, self.volume) if level else 0

    def _tone_on(self):
        self.buzzer.freq(TONES.get(self.tone, TONES["normal"]))
        self.buzzer.duty_u16(_DUTY[self.level])
        self.sounding = True
        self.beeps += 1

    def _tone_off(self):
        self.buzzer.duty_u16(0)
        self.sounding = False

    def quiet(self):
        self._tone_off()
        self.led.value(0)

    async def chirp(self, n=1):
        """A short self-test or fault chirp."""
        for _ in range(n):
            self.buzzer.freq(_FAULT_CHIRP_HZ)
            self.buzzer.duty_u16(_DUTY[2])
            await self.clock.sleep(0.1)
            self.buzzer.duty_u16(0)
            await self.clock.sleep(0.1)

    async def cycle(self, wake):
        """One alert cycle: returns after at most 2 s, or at once when `wake` fires."""
        if self.phase == "due" and self.level > 0:
            self.led.value(1)
            self._tone_on()
            fired = await self.clock.wait(wake, _ON_S)
            self._tone_off()
            self.led.value(0)
            if not fired:
                await self.clock.wait(wake, _OFF_S)
        elif self.phase in ("available", "due"):
            # Light only: early window, or a silent mode (assisted).
            self._tone_off()
            self.led.value(1)
            await self.clock.wait(wake, None)
        else:
            self.quiet()
            await self.clock.wait(wake, None)
        wake.clear()
