#!/bin/bash
# TIGER of the CPU preset (dropout 0.15, as the preset keeps it), one thread against two.
cd "$(dirname "$0")/../../.."
C="--dataset=amazon-beauty --data_path=../shared/datasets --size_preset=cpu --sid_collaborative_weight=0.0"
.venv/bin/python -m recbole_semprune.benchmark $C --models=TIGER --max_steps=40 --eval_max_users=200 --threads=1 --output=/tmp/scale/d1 > /tmp/scale/d1.log 2>&1
.venv/bin/python -m recbole_semprune.benchmark $C --models=TIGER --max_steps=40 --eval_max_users=200 --threads=2 --output=/tmp/scale/d2 > /tmp/scale/d2.log 2>&1
