import time, torch, sys
from openmagvit2 import Tokenizer
torch.manual_seed(0)
x0 = torch.rand(8, 3, 64, 64) * 2 - 1
for name, cfg, cl in [("cur", dict(ch=32, ch_mult=[1,2,2], num_res_blocks=1), False),
                      ("cur+cl", dict(ch=32, ch_mult=[1,2,2], num_res_blocks=1), True),
                      ("112", dict(ch=32, ch_mult=[1,1,2], num_res_blocks=1), False),
                      ("112+cl", dict(ch=32, ch_mult=[1,1,2], num_res_blocks=1), True)]:
    tok = Tokenizer(**cfg).train()
    x = x0
    if cl:
        tok = tok.to(memory_format=torch.channels_last); x = x0.contiguous(memory_format=torch.channels_last)
    ts=[]
    for i in range(5):
        t=time.perf_counter()
        out = tok(x); (out.reconstruction.abs().mean() + 0.1*out.quantizer.entropy_loss + 0.25*out.quantizer.commitment).backward()
        ts.append(time.perf_counter()-t)
    print(name, round(min(ts[1:]),3), round(sum(p.numel() for p in tok.parameters())/1e6,2), flush=True)
