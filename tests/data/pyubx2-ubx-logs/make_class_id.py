"""Writes ubx_class_id.json: the UBX class and id pyubx2 gives every message
name that test_stream.py.txt's expected results use (pyubx2's own
UBX_MSGIDS table), so the stream test checks each frame's class and id, not
only its protocol. Run: pip install pyubx2 && python3 make_class_id.py"""
import json
import re

import pyubx2
from pyubx2 import UBX_MSGIDS

text = open("test_stream.py.txt", encoding="utf-8").read()
names = sorted(set(re.findall(r"<UBX\(([A-Z0-9-]+)[,)]", text)))
by_name = {}
for key, name in UBX_MSGIDS.items():
    by_name.setdefault(name, [key[0], key[1]])
out = {n: by_name[n] for n in names}
with open("ubx_class_id.json", "w", encoding="utf-8") as f:
    f.write('{"pyubx2": "%s",\n "class_id": {\n' % pyubx2.version)
    f.write(",\n".join('  "%s": [%d, %d]' % (n, c, i) for n, (c, i) in out.items()))
    f.write("\n }\n}\n")
