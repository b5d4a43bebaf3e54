"""ArtFlow training step time on this machine: the PFN (hidden 512 and 128) with each loss network that
needs no download, batch 4, patches 256 and 128 (forward, loss network, backward; 2 steps after a
warm-up). Run alone on the machine: python benchmarks/artflow_step_time.py"""
import time

import torch
from upscale_cli.archs.artflow import ArtFlow, ArtFlowConfig, initialize_from
from upscale_cli.train.recipes.artflow import ArtFlowOptions, loss_network, style_distance
import torch.nn.functional as F
torch.manual_seed(0)
for hidden in (512, 128):
    model = ArtFlow(ArtFlowConfig(hidden=hidden))
    for name in ("stvgg", "random"):
        net = loss_network(ArtFlowOptions(loss_net=name))
        for patch in (256, 128):
            c, s = torch.rand(4, 3, patch, patch), torch.rand(4, 3, patch, patch)
            initialize_from(model, c); model.train()
            def step():
                out = model(c, s)
                fo = net(out)
                with torch.no_grad():
                    fc, fs = net(c), net(s)
                loss = 0.1 * F.mse_loss(fo[-1], fc[-1]) + style_distance(fo, fs)
                model.zero_grad(); loss.backward()
            step()
            t = time.perf_counter(); step(); step()
            print(f"hidden {hidden} loss_net {name} batch 4 patch {patch}: {(time.perf_counter()-t)/2:.2f} s/step", flush=True)
