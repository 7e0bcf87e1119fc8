// USM-100 ultrasonic manhole sensor: uplink decoder in The Things Network device-repository
// format (decodeUplink), as ChirpStack v4 also runs it. A fictional model of this project.
//
// fPort 2: periodic report; fPort 3: alarm report (sent at once when the cover is moved or the
// water comes close, and again when it is over). Both carry one 8-byte frame, big-endian:
//
//   byte  type    field          meaning                                       no reading
//   0     uint8   frame_version  layout version, 1
//   1     uint8   flags          bit 0 moved (cover lifted or displaced),
//                                bit 1 water_alarm (water within 400 mm)
//   2-3   uint16  distance       mm from the cover down to the water          0xFFFF
//   4-5   int16   temperature    0.1 degree C                                  0x7FFF
//   6     uint8   tilt           whole degrees from level                      0xFF
//   7     uint8   battery        2.00 V + n x 0.01 V                           0xFF
//
// A field holding its "no reading" value is left out of data. Any other fPort, or a frame of
// another length, is an error.
//
// Example: 01 00 06 a4 00 dd 03 9d on fPort 2 ->
//   {frame_version: 1, moved: false, water_alarm: false, distance: "1700 mm",
//    temperature: "22.1 ℃", tilt: "3 °", battery: 3.57}

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
  var data = {
    frame_version: bytes[0],
    moved: (bytes[1] & 0x01) !== 0,
    water_alarm: (bytes[1] & 0x02) !== 0,
  };
  var distance = uint16(bytes, 2);
  if (distance !== 0xffff) {
    data.distance = distance + " mm";
  }
  var temperature = int16(bytes, 4);
  if (temperature !== 0x7fff) {
    data.temperature = (temperature / 10).toFixed(1) + " ℃";
  }
  if (bytes[6] !== 0xff) {
    data.tilt = bytes[6] + " °";
  }
  if (bytes[7] !== 0xff) {
    data.battery = (200 + bytes[7]) / 100;
  }
  return { data: data, warnings: [], errors: [] };
}
