import sys, time, torch, importlib.util
sys.path.insert(0, '.')
from quant_fixtures.metrics import token_comparison as new
spec = importlib.util.spec_from_file_location('old', 'benchmarks/_old_tc.py'); old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
for V in (151936, 32000):
    torch.manual_seed(0)
    ref = (torch.randn(8192, V, device='cuda') * 3).half(); cand = (ref.float() + 0.3 * torch.randn_like(ref, dtype=torch.float32)).half()
    t = torch.randint(0, V, (8192,), device='cuda')
    for m in (old, new): m.compare_positions(ref, cand, t)
    for name, m in (('old', old), ('new', new), ('old', old), ('new', new)):
        torch.cuda.synchronize(); a = time.perf_counter(); r = m.compare_positions(ref, cand, t); torch.cuda.synchronize()
        print(V, name, round(time.perf_counter() - a, 3), 's for 8192 positions', flush=True)
    a, b = old.compare_positions(ref, cand, t), new.compare_positions(ref, cand, t)
    for f in a: print(f, 'equal' if (a[f] == b[f]).all() else f'max diff {abs(a[f].astype(float) - b[f].astype(float)).max()}')
