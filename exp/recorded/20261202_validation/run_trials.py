"""Runs solver trials (settings around configs/demo.py) on a sample folder and appends one JSON
line per (trial, slice); resumes a partly written output.  From the repository root:

    .venv/bin/python exp/recorded/20261202_validation/run_trials.py --modality CT --data val_samples \
        --trials exp/recorded/20261202_validation/trials/ct_lam.json --out ct_lam.jsonl
"""
import argparse, json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torch
torch.set_num_threads(1)
from configs.demo import get_config
from configs.base import solver_config_for
from physics import make_physics, simulate_measurements, noise_from_config
from models.priors import load_prior
from run_checks import slice_seed
from solvers import make_solver, needs_prior
from utils.data import load_dataset
from utils.metrics import compute_metrics

ap = argparse.ArgumentParser()
ap.add_argument("--modality", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--trials", required=True, help="JSON file: list of {tag, solver, cfg, physics?, prior?, noise?}")
ap.add_argument("--out", required=True)
ap.add_argument("--volumes", default="")
a = ap.parse_args()
deg = "MRI-multi" if a.modality == "MRI" else "SV-CT"
trials = json.load(open(a.trials))
done = set()
if os.path.exists(a.out):
    for line in open(a.out):
        r = json.loads(line); done.add((r["tag"], r["slice"]))
samples = load_dataset(a.data, a.modality)
if a.volumes:
    vols = a.volumes.split(",")
    samples = [s for s in samples if s.name.split("/")[0] in vols]
priors = {}
for tr in trials:
    cfg = get_config()
    with cfg.unlocked():
        cfg.physics.update(tr.get("physics", {}))
        for k, v in tr.get("noise", {}).items():
            cfg.physics[k] = v
    name = tr["solver"]
    scfg = solver_config_for(cfg, name, a.modality)
    with scfg.unlocked():
        for k, v in tr.get("cfg", {}).items():
            if isinstance(v, dict):
                scfg[k].update(v)
            else:
                scfg[k] = v
        if "disable_progress" in scfg: scfg.disable_progress = True
        if "progress" in scfg: scfg.progress = False
    pname = tr.get("prior", cfg.prior.mri if a.modality == "MRI" else cfg.prior.ct)
    den = None
    if needs_prior(name):
        if pname not in priors:
            priors[pname] = load_prior(pname)
        den = priors[pname]
    noise = noise_from_config(cfg.physics, a.modality)
    for s in samples:
        if (tr["tag"], s.name) in done:
            continue
        seed = slice_seed(cfg.seed, s.name)
        A = make_physics(deg, cfg.physics, s)
        x = s.x_ref[None]
        y = simulate_measurements(A, x, noise=noise, seed=seed)
        t0 = time.time()
        solver = make_solver(name, scfg, den, seed=seed, seeds=[seed], perf=cfg.get("perf"))
        res = solver(y, A)
        dt = time.time() - t0
        m = compute_metrics(res.x_hat[0], x[0])
        m_in = compute_metrics(A.input_image(y)[0], x[0])
        rec = {"tag": tr["tag"], "solver": name, "slice": s.name, "psnr": m["psnr"], "ssim": m["ssim"],
               "psnr_in": m_in["psnr"], "seconds": dt, "prior": pname if den is not None else None}
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(rec, flush=True)
