"""Independent oracle for plugins/positioning/tests/ubx_streams.rs.

Decodes every stream in this folder with pyubx2 (PyPI, `pip install pyubx2`),
ignoring errors so decoding goes on past corrupt frames, and writes
expected_frames.json: per stream the number of good UBX and RTCM3 frames
and every NAV-PVT's values. Rerun after adding a stream:
    python3 make_expected.py
"""
import json, os
from pyubx2 import UBXReader, UBX_PROTOCOL, NMEA_PROTOCOL, RTCM3_PROTOCOL

out = {}
for name in sorted(os.listdir('.')):
    if not (name.endswith('.log') or name.endswith('.ubx')):
        continue
    ubx = rtcm = 0
    pvts = []
    with open(name, 'rb') as stream:
        reader = UBXReader(stream, protfilter=UBX_PROTOCOL | NMEA_PROTOCOL | RTCM3_PROTOCOL, quitonerror=0, validate=1)
        for raw, parsed in reader:
            if parsed is None or raw is None:
                continue
            if raw[:2] == b'\xb5\x62':
                ubx += 1
                if parsed.identity == 'NAV-PVT':
                    pvts.append({'lat': parsed.lat, 'lon': parsed.lon, 'height_mm': parsed.height,
                                 'hmsl_mm': parsed.hMSL, 'gspeed_mms': parsed.gSpeed, 'fix_type': parsed.fixType,
                                 'num_sv': parsed.numSV})
            elif raw[:1] == b'\xd3':
                rtcm += 1
    out[name] = {'ubx_frames': ubx, 'rtcm3_frames': rtcm, 'nav_pvt': pvts}
with open('expected_frames.json', 'w') as f:
    json.dump(out, f, indent=1, sort_keys=True)
print(len(out), 'streams')
