import json, sys, collections, statistics as st
rows=[json.loads(l) for f in sys.argv[1:] for l in open(f)]
by=collections.defaultdict(list)
for r in rows: by[r["tag"]].append(r)
for tag, rs in by.items():
    vols=collections.defaultdict(list)
    for r in rs: vols[r["slice"].split("/")[0]].append(r["psnr"])
    pv=" ".join(f"{v}:{st.mean(p):.2f}" for v,p in vols.items())
    print(f"{tag:40s} n={len(rs):2d} psnr={st.mean(r['psnr'] for r in rs):6.2f} ssim={st.mean(r['ssim'] for r in rs):.3f} in={st.mean(r['psnr_in'] for r in rs):5.2f} t={st.mean(r['seconds'] for r in rs):5.1f}s | {pv}")
