import sys, time, torch
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from random_models import SEED_CONFIGS
from transformers import AutoConfig, AutoModelForCausalLM
from quant_fixtures.compute.long_context import score_in_chunks
from quant_fixtures.compute.memory import MemoryBudget
from quant_fixtures.metrics.perplexity import Window
name = sys.argv[1]
values = dict(SEED_CONFIGS[name]); config = AutoConfig.for_model(values.pop('model_type'), **values)
with torch.device('cuda'):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
ids = torch.randint(3, config.vocab_size, (32768 + 4096 * 6,))
# one 32K stretch, and six 4K probes that decode their last 7 positions one by one
windows = [Window(0, 32768, 1)] + [Window(32768 + i * 4096, 32768 + (i + 1) * 4096, 32768 + i * 4096 + 4089) for i in range(6)]
decode = [32767] + [4088] * 6
score_in_chunks(model, ids, windows[:2], 1024, 'warm', budget=MemoryBudget('cuda:0'), decode_from=decode[:2])
from torch.profiler import profile, ProfilerActivity
torch.cuda.synchronize(); a = time.perf_counter()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    score_in_chunks(model, ids, windows, 1024, 'p', budget=MemoryBudget('cuda:0'), decode_from=decode, batch_size=6)
torch.cuda.synchronize(); print(name, 'wall', round(time.perf_counter() - a, 2))
print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=14, max_name_column_width=60))
