"""A Hugging Face ``Trainer`` script with no tracelet line in it: run it under ``tracelet run``.

    tracelet run --backend mlflow,wandb -- python examples/hf_trainer.py
    tracelet run -- torchrun --nproc_per_node=2 examples/hf_trainer.py    # one run, from rank 0

What ``Trainer.log`` reports (loss, grad_norm, learning_rate, epoch, eval_* metrics, train
runtime), the ``TrainingArguments`` and model config as params, the best checkpoint, system
metrics, git state and console output are tracked, whatever ``--report-to`` says. The model is
a two-layer BERT built from a config with a 64-token vocabulary, trained on random token
sequences: nothing is downloaded.
"""

from __future__ import annotations

import argparse

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments


class RandomTokens(torch.utils.data.Dataset):
    """Sequences whose label is whether token 1 occurs in them: learnable, and made here."""

    def __init__(self, size: int, length: int, vocab: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(2, vocab, (size, length), generator=generator)
        marked = torch.rand(size, generator=generator) < 0.5
        self.input_ids[marked, torch.randint(0, length, (int(marked.sum()),), generator=generator)] = 1
        self.labels = marked.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


def build_trainer(args: argparse.Namespace, trainer_class: type[Trainer] = Trainer) -> Trainer:
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    training = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=args.lr,
        logging_steps=args.logging_steps,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        report_to=args.report_to,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    return trainer_class(
        model=model,
        args=training,
        train_dataset=RandomTokens(512, 16, 64, seed=1),
        eval_dataset=RandomTokens(64, 16, 64, seed=2),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--report-to", nargs="*", default=["none"], help="the Trainer's own integrations")
    parser.add_argument("--output-dir", default="example-output/hf_trainer")
    return parser.parse_args(argv)


def main() -> None:
    trainer = build_trainer(parse_args())
    trainer.train()
    print(trainer.evaluate())


if __name__ == "__main__":
    main()
