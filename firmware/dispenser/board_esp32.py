"""The ESP32 board: the only firmware module that builds machine.Pin, I2C, PWM, ADC and WDT.

Nothing is built at import time: `Board()` builds the hardware when the device boots, so the
module imports anywhere (and pyright checks it against the ESP32 stubs). Drivers and the app see
only the attributes listed in docs/firmware.md, which the simulated board (sim/board.py) has too.
"""

from micropython import const

# Pin numbers: these mirror hardware/pinmap.json, the one description of the wiring
# (tests/host/test_hardware.py fails if they differ; `dosis hardware check` explains each pin).
_COIL1 = const(19)  # ULN2003 IN1
_COIL2 = const(18)  # ULN2003 IN2
_COIL3 = const(17)  # ULN2003 IN3
_COIL4 = const(16)  # ULN2003 IN4
_HOME = const(27)  # optical home sensor, internal pull-up, low at home
_BEAM = const(35)  # IR break-beam receiver, input-only pin with a 10 kOhm pull-up to 3.3 V
_BTN_TAKEN = const(32)  # large "taken" button to GND, internal pull-up
_BTN_SERVICE = const(33)  # service button to GND, internal pull-up
_LED = const(26)  # light-stage LED, high = on
_BUZZER = const(25)  # passive piezo through an NPN transistor, PWM
_I2C_SDA = const(21)  # SSD1306 0x3C and DS3231 0x68
_I2C_SCL = const(22)
_MAINS = const(39)  # mains-present divider, high on mains (input-only, polled)
_BATTERY = const(34)  # battery divider on ADC1 (ADC2 is unusable with Wi-Fi on)

_I2C_FREQ = const(400_000)
_BATTERY_DIVIDER = const(2)  # the 2:1 divider (pinmap.json battery.divider)
_BUZZER_HZ = const(2000)  # a starting frequency only; the alerts set the tone


class Board:
    """The attributes of docs/firmware.md, built from real pins.

    `clock` is the device's `dispenser.clock.Clock`, built by the caller (main.py).
    """

    name = "esp32"
    step_delay_ms = 2  # between half-steps: the 28BYJ-48 stalls much faster than this
    beam_verify = True  # filled compartments break the beam at the opening
    heartbeat_s = 60  # the doses task re-plans (and checks in) at least this often

    def __init__(self, clock=None):
        from machine import ADC, I2C, PWM, Pin

        self.clock = clock
        # Outputs start low: the coils de-energised, the light off.
        self.coils = (
            Pin(_COIL1, Pin.OUT, value=0),
            Pin(_COIL2, Pin.OUT, value=0),
            Pin(_COIL3, Pin.OUT, value=0),
            Pin(_COIL4, Pin.OUT, value=0),
        )
        self.home = Pin(_HOME, Pin.IN, Pin.PULL_UP)
        # GPIO34-39 have no internal pulls: the beam's pull-up is a resistor on the board.
        self.beam = Pin(_BEAM, Pin.IN)
        self.btn_taken = Pin(_BTN_TAKEN, Pin.IN, Pin.PULL_UP)
        self.btn_service = Pin(_BTN_SERVICE, Pin.IN, Pin.PULL_UP)
        self.led = Pin(_LED, Pin.OUT, value=0)
        self.buzzer = PWM(Pin(_BUZZER, Pin.OUT, value=0), freq=_BUZZER_HZ, duty_u16=0)
        self.i2c = I2C(0, scl=Pin(_I2C_SCL), sda=Pin(_I2C_SDA), freq=_I2C_FREQ)
        self.mains = Pin(_MAINS, Pin.IN)
        # 11 dB attenuation: read_uv() is calibrated up to about 2.45 V; a full cell gives 2.1 V.
        self.battery = ADC(Pin(_BATTERY), atten=ADC.ATTN_11DB)
        self.battery_divider = _BATTERY_DIVIDER
        self.display = None
        try:
            from dispenser.screens import Display
            from dispenser.ssd1306 import SSD1306

            self.display = Display(SSD1306(self.i2c))
        except (ImportError, OSError):
            # No display modules, or no display answering: the device still reminds by light
            # and sound, and the app shows nothing rather than stopping.
            self.display = None

    def battery_mv(self):
        """The cell's voltage in mV (the ADC reads it after the divider)."""
        return self.battery.read_uv() * _BATTERY_DIVIDER // 1000

    def flag(self):
        """A flag an interrupt handler may set (Event.set is not safe in an IRQ)."""
        import asyncio

        return asyncio.ThreadSafeFlag()

    def device_id(self):
        """Pseudonymous and stable: from the chip's factory MAC (no personal data)."""
        import binascii

        from machine import unique_id

        return "dosis-" + binascii.hexlify(unique_id()[-3:]).decode()

    def wlan(self):
        """The Wi-Fi station interface (net.py associates it; connect() does not block)."""
        import network

        return network.WLAN(network.STA_IF)

    def watchdog(self, ms):
        """Start the hardware watchdog (at least 1000 ms on the ESP32); it cannot be stopped."""
        from machine import WDT

        return WDT(timeout=ms)

    def fs(self):
        """The littlefs flash root, through the interface the dose log uses."""
        from dispenser.doselog import OsFS

        return OsFS("")

    def nvs(self):
        """The ESP32's NVS namespace for Dosis: survives a filesystem that will not mount."""
        import esp32

        return esp32.NVS("dosis")

    def path(self, name):
        """Files live in the flash filesystem's root."""
        return "/" + name
