#!/usr/bin/env python3
"""Instructions and atomic read-modify-writes executed, from callgrind's
per-instruction counts.

    locked.py REQUESTS DUMP...

DUMP: callgrind output written with --dump-instr=yes --dump-line=no
--compress-strings=no --compress-pos=no (its addresses are each object's
own, as objdump prints them). An instruction counts
when it is one the CPU executes as a locked read-modify-write: any `lock`
prefixed instruction, and `xchg` with a memory operand (locked without the
prefix). Every mutex section takes at least two (lock and unlock), every
`Arc` clone and drop one each.

Prints the instructions and the locked ones per request, and (on stderr)
the functions that executed the most locked ones.
"""

import collections
import os
import subprocess
import sys


def locked_addresses(path):
    """Link-time addresses of the locked instructions in `path`."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", path],
        capture_output=True, text=True, check=True,
    ).stdout
    found = set()
    for line in out.splitlines():
        addr, sep, insn = line.partition(":\t")
        if not sep:
            continue
        insn = insn.strip()
        mnemonic = insn.split(" ", 1)[0]
        if mnemonic == "lock" or (mnemonic.startswith("xchg") and "(" in insn):
            try:
                found.add(int(addr.strip(), 16))
            except ValueError:
                pass
    return found


def costs(dumps):
    """(object, address) -> (function, instructions executed)."""
    counted = collections.defaultdict(int)
    function = {}
    for dump in dumps:
        ob = fn = None
        skip = False
        with open(dump) as f:
            for line in f:
                if line.startswith("ob="):
                    ob = line[3:].strip()
                elif line.startswith("fn="):
                    fn = line[3:].strip()
                elif line.startswith("calls="):
                    skip = True  # the next cost line is the call's, inclusive
                elif line[:2] == "0x":
                    if skip:
                        skip = False
                        continue
                    addr, cost = line.split()[:2]
                    key = (ob, int(addr, 16))
                    counted[key] += int(cost)
                    function[key] = fn
    return counted, function


def main():
    requests, dumps = int(sys.argv[1]), sys.argv[2:]
    counted, function = costs(dumps)
    total = 0
    by_function = collections.Counter()
    for ob in {ob for ob, _ in counted}:
        if not os.path.isfile(ob):
            continue
        locked = locked_addresses(ob)
        for (o, addr), n in counted.items():
            if o == ob and addr in locked:
                total += n
                by_function[function[(o, addr)]] += n
    everything = sum(counted.values())
    print(f"{everything // requests} {total / requests:.1f}")
    for fn, n in by_function.most_common(int(os.environ.get("LOCKED_TOP", "12"))):
        print(f"  {n / requests:6.2f}  {fn[:110]}", file=sys.stderr)


if __name__ == "__main__":
    main()
