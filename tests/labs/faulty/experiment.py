import math
import os
import sys
import time

from harness import score

MODE = "ok"
X = 0.0

if MODE == "crash":
    raise SystemExit("boom: the experiment crashed")
if MODE == "hang":
    time.sleep(60)
if MODE == "slow":
    time.sleep(2.5)
if MODE == "loud":  # 32 MiB of output, then as long as a hang
    for _ in range(512):
        sys.stdout.write("x" * 65535 + "\n")
    time.sleep(60)
print("training...")
print("---")
if MODE == "nometric":
    print("loss: 1.0")
elif MODE == "nan":
    print(f"score: {math.nan}")
elif MODE == "outside":
    print("score: 5000")
elif MODE == "env":
    leaked = [k for k in os.environ if k.startswith("SECRET")]
    print(f"score: {len(leaked)}")
else:
    print(f"score: {score(X)}")
sys.stdout.flush()
