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
ids = torch.randint(3, config.vocab_size, (32768 * 2 + 4096 * 12,))
windows = [Window(0, 32768, 1), Window(32768, 65536, 32769)] + [Window(65536 + i * 4096, 65536 + (i + 1) * 4096, 65536 + i * 4096 + 4089) for i in range(12)]
decode = [32767, 32767] + [4088] * 12
def long_read():
    torch.cuda.synchronize(); a = time.perf_counter()
    score_in_chunks(model, ids, windows, 1024, 'p', budget=MemoryBudget('cuda:0'), decode_from=decode, batch_size=6)
    torch.cuda.synchronize(); return time.perf_counter() - a
def ppl():
    x = torch.randint(3, config.vocab_size, (8, 2048), device='cuda')
    torch.cuda.synchronize(); a = time.perf_counter()
    with torch.inference_mode():
        for _ in range(3): model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()
    torch.cuda.synchronize(); return time.perf_counter() - a
for cudnn in (True, False, True, False):
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    long_read() if cudnn is True and name == 'x' else None
    print(name, 'cudnn' if cudnn else 'no-cudnn', 'long', round(long_read(), 2), 's; 3 x [8,2048] forward', round(ppl(), 3), 's', flush=True)
