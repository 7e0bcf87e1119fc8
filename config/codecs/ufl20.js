// UFL-20 ultrasonic bin fill-level sensor: uplink decoder in The Things Network
// device-repository format (decodeUplink), as ChirpStack v4 also runs it. A fictional model
// of this project.
//
// fPort 2: periodic report; fPort 3: alarm report (sent at once on a fire alarm, a full or
// knocked-over bin, and again when it is over). Both carry one 8-byte frame, big-endian:
//
//   byte  type    field        meaning                                         no reading
//   0     uint8   status       bit 0 fire_alarm (60 degrees C or hotter),
//                              bits 1-7 reserved (0)
//   1-2   uint16  distance     mm from the lid down to the rubbish             0xFFFF
//   3-4   int16   temperature  0.1 degree C                                    0x7FFF
//   5     uint8   tilt         whole degrees from upright                      0xFF
//   6-7   uint16  battery      millivolts                                      0xFFFF
//
// A field holding its "no reading" value is left out of data. Any other fPort, or a frame of
// another length, is an error.
//
// Example: 00 03 52 00 f5 02 0e 1a on fPort 2 ->
//   {fire_alarm: false, distance: "850mm", temperature: "24.5°C", tilt: "2°", battery: 3.61}

var FRAME_LENGTH = 8;

function uint16(bytes, i) {
  return (bytes[i] << 8) | bytes[i + 1];
}

function int16(bytes, i) {
  var value = uint16(bytes, i);
  return value > 0x7fff ? value - 0x10000 : value;
}

function decodeUplink(input) {
  var bytes = input.bytes;
  if (input.fPort !== 2 && input.fPort !== 3) {
    return { errors: ["unknown fPort " + input.fPort] };
  }
  if (bytes.length !== FRAME_LENGTH) {
    return { errors: ["frame of " + bytes.length + " bytes, expected " + FRAME_LENGTH] };
  }
  var data = { fire_alarm: (bytes[0] & 0x01) !== 0 };
  var distance = uint16(bytes, 1);
  if (distance !== 0xffff) {
    data.distance = distance + "mm";
  }
  var temperature = int16(bytes, 3);
  if (temperature !== 0x7fff) {
    data.temperature = (temperature / 10).toFixed(1) + "°C";
  }
  if (bytes[5] !== 0xff) {
    data.tilt = bytes[5] + "°";
  }
  var battery = uint16(bytes, 6);
  if (battery !== 0xffff) {
    data.battery = battery / 1000;
  }
  return { data: data, warnings: [], errors: [] };
}
