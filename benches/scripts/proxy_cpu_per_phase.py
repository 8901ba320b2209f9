#!/usr/bin/env python3
"""proxy_cpu_per_phase.py LOG OUT: follows a `weft-benches proxy` log and, at
each "  <scenario> <contender>" line (a phase starting), reads the user +
system CPU time of every weft-proxy process from /proc/<pid>/stat. Writes
one line per phase to OUT: phase, CPU seconds the sidecars used during it,
wall seconds. Stops when the harness exits (15 min at most)."""
import os,sys,time,subprocess
log,out=sys.argv[1],sys.argv[2]
def ticks():
    t=0
    for p in os.listdir('/proc'):
        if not p.isdigit(): continue
        try:
            if b'weft-proxy' not in open(f'/proc/{p}/cmdline','rb').read().split(b'\0')[0]: continue
            f=open(f'/proc/{p}/stat').read().rsplit(')',1)[1].split()
            t+=int(f[11])+int(f[12])
        except Exception: pass
    return t
seen=0; marks=[]
deadline=time.time()+900
while time.time()<deadline:
    try: lines=open(log).read().splitlines()
    except FileNotFoundError: lines=[]
    new=[l for l in lines if l.startswith('  ') and len(l.split())==2][seen:]
    for l in new:
        marks.append((l.strip(),ticks(),time.time()))
    seen+=len(new)
    if any(l.startswith('wrote') or l.startswith('###') for l in lines) and os.path.exists(log) and subprocess.run(['pgrep','-f','weft-benches proxy'],capture_output=True).returncode!=0:
        break
    time.sleep(0.05)
marks.append(('end',ticks(),time.time()))
with open(out,'w') as f:
    for (a,t0,w0),(b,t1,w1) in zip(marks,marks[1:]):
        f.write(f"{a}\t{(t1-t0)/os.sysconf('SC_CLK_TCK'):.2f}\t{w1-w0:.2f}\n")
