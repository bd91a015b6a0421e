import time, numpy as np, cv2, math, sys, torch
sys.path.insert(0, "src")
from threadpoolctl import threadpool_limits
cv2.setNumThreads(1); torch.set_num_threads(1)
from prefrestore.config import load
from prefrestore.degrade import *
import dataclasses
for prof in ("paper", "released"):
  cfg = load(prof).section("degrade", DegradeConfig)
  rng = np.random.default_rng(0)
  ps = [dataclasses.replace(draw_params(rng, cfg), self_rec=False) for _ in range(300)]
  img = (np.random.default_rng(0).random((512,512,3))*255).astype(np.uint8)
  T = {}; byr = {}
  def tick(k, t0): T[k] = T.get(k,0)+time.perf_counter()-t0; return time.perf_counter()
  with threadpool_limits(1):
    for p in ps[:5]: degrade(img,p,cfg)
    for p in ps:
      t0=t=time.perf_counter()
      v,h = kernel_factors(p,cfg); t=tick('factors',t)
      small = degrade_fast.blur_downsample(img, v, h, lq_size(512,512,p,cfg), "linear"); t=tick('blurdown',t)
      small = add_noise(small,p,cfg); t=tick('noise',t)
      j = jpeg_roundtrip(small,p.q); t=tick('jpeg',t)
      u = upsample(j,512,512,cfg); t=tick('up',t)
      b = min(int(p.r), 8); byr.setdefault(b, []).append(t-t0)
  tot=sum(T.values())
  print(prof, {k: round(v/len(ps)*1e3,3) for k,v in T.items()}, "total ms", round(tot/len(ps)*1e3,3))
  print("  by floor(r) (capped 8): mean ms", {k: (len(v), round(np.mean(v)*1e3,2)) for k,v in sorted(byr.items())})
