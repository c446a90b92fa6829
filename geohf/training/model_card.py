"""The metrics a trained model's card reports, from Trainer's log history."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerState, TrainingArguments


def logged_metrics(state: TrainerState) -> dict[str, float]:
    """The last value of every metric Trainer logged (training summary and evaluations)."""
    out: dict[str, float] = {}
    for entry in state.log_history:
        out.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    return out


def has_eval_metrics(state: TrainerState) -> bool:
    """Whether an evaluation with metrics (not only ``eval_loss``) was logged."""
    return any(k.startswith("eval_") and k != "eval_loss" for e in state.log_history for k in e)


def card_metrics(state: TrainerState, args: TrainingArguments, config, split: str | None) -> tuple[dict, str]:
    """The metrics for the model card and the sentence saying where they come from: the evaluation of the
    checkpoint the folder holds (the best one when ``load_best_model_at_end``, else the last), on the eval
    ``split``, during training, with the coordinate rule the model ``config`` had then."""
    from ..hub.cards import coordinate_rule_text

    evals = [e for e in state.log_history if any(k.startswith("eval_") for k in e)]
    if not evals:
        return logged_metrics(state), ""
    chosen, which = evals[-1], "the last evaluation"
    best = state.best_model_checkpoint
    if args.load_best_model_at_end and best:
        step = int(Path(best).name.rpartition("-")[2] or -1)
        match = [e for e in evals if e.get("step") == step]
        if match:
            chosen = match[-1]
            which = f"the best checkpoint by {args.metric_for_best_model}, loaded at the end"
    metrics = {k: v for k, v in chosen.items() if isinstance(v, (int, float))}
    note = (
        f"Measured on the `{split or 'evaluation'}` split during training, at step {chosen.get('step', '?')} of "
        f"{state.max_steps} ({which}), with coordinates from {coordinate_rule_text(config)}."
    )
    return metrics, note
