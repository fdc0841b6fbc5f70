#!/usr/bin/env python
"""Train and test one RecBole model on atomic files written by ``p2rec bench recbole``.

Runs inside RecBole's own virtual environment, started as a file by its interpreter: it imports nothing of
p2rec (that environment has none of p2rec's pins), only the standard library, torch and RecBole. Prints
nothing of interest; writes one JSON file with the timings, epochs, test metrics and a check that RecBole's
leave-one-out split has exactly the validation/test targets and inputs that p2rec uses.

    python recbole_worker.py --config run.json --out result.json
    python recbole_worker.py --config run.json --out result.json --checkpoint saved/SASRec-....pth

With ``--checkpoint`` it trains nothing: it loads a model RecBole saved (its best epoch) and only tests it.
With ``--resume`` it continues a stopped training from such a file (RecBole's ``resume_checkpoint``: weights,
optimiser, epoch, early-stopping counter and best score; not the random state, so the batches after the resume
differ from those of an uninterrupted run). RecBole then saves its new best epochs into that same file.
Either way the result also holds the test metrics with the user's seen items masked as p2rec masks them
(``test_masked``): RecBole's full-sort evaluation of sequential models never masks them. A job with
``"ranks": {"mask_history": true|false}`` (the workflow's RecBole runs) also gets every user's 0-based
pessimistic validation and test rank of the selected model (``ranks``: user id -> rank), seen items masked
or not, and the training's per-epoch ``history``, from which p2rec writes its run files.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # started as a file, its folder (p2rec's bench package) comes first on sys.path: drop it, so that no
    # module beside this one can stand in for one that RecBole or torch imports
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole reloads its best checkpoint with pickle


def _timed(fn, bucket: list, outputs: list | None = None):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        bucket.append(time.perf_counter() - start)
        if outputs is not None:
            outputs.append(out)
        return out

    return wrapper


def _split_check(eval_data, stage: str, expected: dict, max_len: int) -> dict:
    """Compare RecBole's evaluation rows (user, input list, target) with p2rec's, in original ids."""
    ds = eval_data._dataset
    feats = ds.inter_feat
    uid_field, iid_field = ds.uid_field, ds.iid_field
    users = ds.id2token(uid_field, feats[uid_field].numpy())
    targets = ds.id2token(iid_field, feats[iid_field].numpy())
    lists = feats[iid_field + ds.config["LIST_SUFFIX"]].numpy()
    lengths = feats[ds.config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    bad_target = bad_input = 0
    seen = set()
    for user, target, row, n in zip(users, targets, lists, lengths):
        user = str(user)
        seen.add(user)
        want = expected.get(user)
        if want is None:
            bad_target += 1
            continue
        if str(target) != str(want[stage + "_target"]):
            bad_target += 1
        got = [str(t) for t in ds.id2token(iid_field, row[:n])]
        if got != [str(t) for t in want[stage + "_input"][-max_len:]]:
            bad_input += 1
    return {"rows": int(len(users)), "missing_users": len(set(expected) - seen), "target_mismatch": bad_target,
            "input_mismatch": bad_input}


def masked_ranks(scores, targets, histories):
    """0-based rank of each target among all items after masking padding (id 0) and the row's history
    items (never the target itself); ties count against the target, as in p2rec (pessimistic rank).
    ``scores``: [B, n_items] tensor; ``targets``: B item ids; ``histories``: B lists of item ids."""
    import torch

    scores = scores.clone()
    rows = torch.arange(len(targets))
    targets = torch.as_tensor(targets)
    target_scores = scores[rows, targets].clone()
    scores[:, 0] = -float("inf")
    for row, hist in enumerate(histories):
        scores[row, torch.as_tensor(list(hist), dtype=torch.long)] = -float("inf")
    scores[rows, targets] = target_scores
    return (scores > target_scores[:, None]).sum(1) + (scores == target_scores[:, None]).sum(1) - 1


def user_ranks(model, eval_data, inputs: dict | None = None) -> dict:
    """User id (original) -> 0-based pessimistic rank of the user's target among all items, from RecBole's
    full-sort scores of ``eval_data`` (its validation or test rows). ``inputs``: user id -> the items to mask
    (original ids: the row's whole input, as p2rec masks seen items); None masks the padding only."""
    import torch

    ds = eval_data._dataset
    uid_field, iid_field = ds.uid_field, ds.iid_field
    model.eval()
    out = {}
    with torch.no_grad():
        for batch in eval_data:
            interaction = batch[0].to(model.device)
            scores = model.full_sort_predict(interaction).view(len(interaction), -1).cpu()
            users = [str(u) for u in ds.id2token(uid_field, interaction[uid_field].cpu().numpy())]
            if inputs is None:
                histories = [[] for _ in users]
            else:
                histories = [ds.token2id(iid_field, [str(i) for i in inputs[u]]) for u in users]
            ranks = masked_ranks(scores, interaction[iid_field].cpu(), histories).tolist()
            out.update(zip(users, ranks))
    return out


def masked_test_metrics(model, test_data, expected: dict, k: int = 10) -> dict:
    """HR@k and NDCG@k of RecBole's model with each user's whole test input masked (p2rec's protocol)."""
    import math

    inputs = {u: e["test_input"] for u, e in expected.items()}
    ranks = list(user_ranks(model, test_data, inputs).values())
    hr = sum(r < k for r in ranks) / len(ranks)
    ndcg = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
    return {f"hit@{k}": hr, f"ndcg@{k}": ndcg, "users": len(ranks)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="JSON: model, dataset, config_dict, expected (split file)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint", help="test this saved model (RecBole's .pth) instead of training one")
    parser.add_argument("--resume", help="continue training from this saved model (RecBole's .pth)")
    args = parser.parse_args()
    with open(args.config, encoding="utf-8") as fh:
        job = json.load(fh)

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    config = Config(model=job["model"], dataset=job["dataset"], config_dict=job["config_dict"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_cls = get_model(config["model"])
    # importing RecBole's sequential models switches anomaly detection on for the whole process (~1.6x
    # slower training); switch it off so the timing is fair to RecBole
    torch.autograd.set_detect_anomaly(False)
    model = model_cls(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    torch.autograd.set_detect_anomaly(False)

    check, expected = {}, None
    if job.get("expected"):
        with open(job["expected"], encoding="utf-8") as fh:
            expected = json.load(fh)
        max_len = config["MAX_ITEM_LIST_LENGTH"]
        check = {"valid": _split_check(valid_data, "valid", expected, max_len),
                 "test": _split_check(test_data, "test", expected, max_len)}

    if args.checkpoint:  # test a model RecBole saved: no training, so no training figures
        state = torch.load(args.checkpoint, map_location=config["device"], weights_only=False)
        model.load_state_dict(state["state_dict"])
        start = time.perf_counter()
        test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        result = {"model": job["model"], "checkpoint": args.checkpoint, "test_eval_sec": time.perf_counter() - start,
                  "test": {k: float(v) for k, v in test.items()}, "split_check": check, "torch": torch.__version__}
    else:
        resumed = None
        if args.resume:
            trainer.resume_checkpoint(args.resume)
            resumed = {"file": args.resume, "epochs_done": trainer.start_epoch,
                       "best_valid_ndcg@10": float(trainer.best_valid_score)}
        result = fit_and_test(trainer, train_data, valid_data, test_data, job, resumed)
        result["split_check"] = check
    if expected is not None:  # after RecBole's own test, which loaded the best weights into ``model``
        result["test_masked"] = masked_test_metrics(model, test_data, expected)
    if job.get("ranks"):
        result["ranks"] = run_ranks(model, valid_data, test_data, expected, bool(job["ranks"].get("mask_history")))
    result["device"] = str(config["device"])
    if result["device"].startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(config["device"])
    result["recbole"] = recbole_version()
    result["valid_metric"] = config["valid_metric"]
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)


def run_ranks(model, valid_data, test_data, expected: dict | None, mask_history: bool) -> dict:
    """The selected model's validation and test ranks by user, seen items masked as the run is configured."""
    if mask_history and expected is None:
        raise SystemExit("job: 'ranks' with mask_history needs 'expected' (the split, for each user's input)")

    def inputs(stage):
        return {u: e[f"{stage}_input"] for u, e in expected.items()} if mask_history else None

    return {"mask_history": mask_history, "valid": user_ranks(model, valid_data, inputs("valid")),
            "test": user_ranks(model, test_data, inputs("test"))}


def recbole_version() -> str:
    import recbole

    return str(getattr(recbole, "__version__", "unknown"))


def _epoch_loss(total, batches) -> float | None:
    """RecBole's epoch loss (a sum over its batches, a tuple for multi-part losses) as the mean per batch."""
    if total is None:
        return None
    total = sum(float(t) for t in total) if isinstance(total, (tuple, list)) else float(total)
    return total / batches if batches else total


def fit_and_test(trainer, train_data, valid_data, test_data, job: dict, resumed: dict | None = None) -> dict:
    """RecBole's own training (early stopping on validation) and test of its best epoch, timed. After a resume,
    the epochs and best epoch count the ones done before it; the timings only the ones after it."""
    import torch

    train_times: list[float] = []
    train_out: list = []
    valid_times: list[float] = []
    valid_out: list = []
    trainer._train_epoch = _timed(trainer._train_epoch, train_times, train_out)
    trainer._valid_epoch = _timed(trainer._valid_epoch, valid_times, valid_out)
    started = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fit_seconds = time.perf_counter() - started
    anomaly_detection = torch.is_anomaly_enabled()
    start = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    test_seconds = time.perf_counter() - start
    before = resumed["epochs_done"] if resumed else 0
    best_epoch = _best_epoch_after_resume([score for score, _ in valid_out], resumed)
    try:
        batches = len(train_data)
    except TypeError:
        batches = None
    history = [{"epoch": before + i + 1, "train_loss": _epoch_loss(loss, batches), "train_seconds": train_s,
                "eval_seconds": valid_s, "valid": {k: float(v) for k, v in dict(valid).items()}}
               for i, (loss, train_s, valid_s, (_, valid)) in enumerate(zip(train_out, train_times, valid_times,
                                                                             valid_out))]
    return {
        "model": job["model"],
        "epochs": before + len(train_times),
        "epochs_timed": len(train_times),
        "resumed": resumed,
        "best_epoch": best_epoch,
        "sec_per_epoch": sum(train_times) / max(len(train_times), 1),
        "eval_sec": sum(valid_times) / max(len(valid_times), 1),
        "test_eval_sec": test_seconds,
        "fit_seconds": fit_seconds,
        "best_valid_ndcg@10": float(best_valid),
        "test": {k: float(v) for k, v in test.items()},
        "training_samples": int(len(train_data._dataset)),
        "torch_threads": torch.get_num_threads(),
        "anomaly_detection": anomaly_detection,
        "torch": torch.__version__,
        "history": history,
    }


def _best_epoch(scores: list[float]) -> int:
    """The epoch (1-based) whose weights RecBole keeps: the last one with a score >= every earlier one."""
    best, best_epoch = -float("inf"), 0
    for epoch, score in enumerate(scores, start=1):
        if score >= best:
            best, best_epoch = score, epoch
    return best_epoch


def _best_epoch_after_resume(scores: list[float], resumed: dict | None) -> int:
    """The best epoch (1-based, counting the epochs before a resume). RecBole saves only its best epochs, so a
    resumed file holds the best of the first ``epochs_done`` epochs, which stands until a later one reaches it."""
    if not resumed:
        return _best_epoch(scores)
    return _best_epoch([resumed["best_valid_ndcg@10"], *scores]) + resumed["epochs_done"] - 1


if __name__ == "__main__":
    main()
