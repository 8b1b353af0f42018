#!/bin/bash
cd /work/main
C="--dataset=amazon-beauty --data_path=../shared/datasets --size_preset=cpu --sid_collaborative_weight=0.0 --hidden_dropout_prob=0.0 --attn_dropout_prob=0.0"
.venv/bin/python -m recbole_semprune.benchmark $C --models=T1=TIGER --max_steps=40 --eval_max_users=200 --threads=1 --output=/tmp/scale/t1 > /tmp/scale/t1.log 2>&1
.venv/bin/python -m recbole_semprune.benchmark $C --models=T2=TIGER --max_steps=40 --eval_max_users=200 --threads=2 --output=/tmp/scale/t2 > /tmp/scale/t2.log 2>&1
OMP_NUM_THREADS=1 .venv/bin/python run_recbole_semprune.py --model=TIGER $C --nproc=2 --max_steps=80 --epochs=1 --checkpoint_dir=/tmp/scale/ddp --sid_cache_dir=results/amazon-beauty/TIGERnodrop/seed-2020/saved/sid_cache --show_progress=False > /tmp/scale/ddp.log 2>&1
