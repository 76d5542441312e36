"""A short model card (Mitchell et al. 2019) written from the bundle and the audit: what the
model is for, what it was trained on, how it was measured and where it falls short."""

from __future__ import annotations

# An audit finding becomes a listed limitation past these levels.
ECE_LIMIT = 0.05  # calibrated confidence off by more than 5 points on average
ROBUSTNESS_DROP_LIMIT = 0.10  # mean corruption accuracy 10% (relative) under clean
CORRUPTION_LIMIT = 0.25  # any single corruption losing a quarter of the clean accuracy
ADVERSARIAL_EPS = "2/255"  # an invisible perturbation: the level reported to users
CHECK_LIMITS = (("label_issues", "suspected label errors"),
                ("leaking_groups", "groups of (near) copies or look-alikes shared between splits"),
                ("conflicting_label_groups", "groups of (near) identical images under different labels"),
                ("exact_duplicate_groups", "groups of exact duplicates"), ("corrupt", "unreadable files"))


def model_card(bundle, inputs: dict) -> dict:
    training, audit, check = bundle.training, inputs.get("audit"), inputs.get("check")
    classes = ", ".join(bundle.class_names[:20]) + (" …" if bundle.num_classes > 20 else "")
    card = {
        "intended_use": _intended_use(bundle, classes),
        "data": (f"{training.get('train_images', '?')} training and {training.get('val_images', '?')} "
                 f"validation images from {training.get('data', '?')} (fingerprint "
                 f"{training.get('dataset_fingerprint', '?')})."),
        "evaluation": _evaluation(bundle, inputs),
        "limitations": [], "not_run": [],
    }
    limits, not_run = card["limitations"], card["not_run"]
    if audit:
        _audit_limits(audit, limits, not_run)
    else:
        not_run.append("no audit on a test set (clarivis audit)")
    if check:
        summary = check.get("summary", {})
        for key, label in CHECK_LIMITS:
            if summary.get(key):
                limits.append(f"data check: {summary[key]} {label} in the data")
    else:
        not_run.append("no data check (clarivis check)")
    return card


def _intended_use(bundle, classes: str) -> str:
    size = f"Inputs are resized to {bundle.input_size[1]} px. Use it on images like the training data"
    review = ". Not validated for decisions without a human review."
    if bundle.multilabel:
        return (f"Tags each image with any set of {bundle.num_classes} labels ({classes}), each "
                f"decided at its own threshold; an image may get none. {size}" + review)
    return (f"Sorts images into {bundle.num_classes} classes ({classes}). {size}; images unlike "
            "every class are answered 'unknown'"
            + ("" if bundle.ood else " only once a rejection threshold is fitted") + review)


def _score(metrics: dict) -> str:
    """'accuracy 0.912', or 'mAP 0.874, F1 (macro) 0.801' for multi-label metrics."""
    if metrics.get("task") == "multilabel":
        return f"mAP {metrics['map_macro']:.3f}, F1 (macro) {metrics['f1_macro']:.3f}"
    return f"accuracy {metrics['accuracy']:.3f}"


def _evaluation(bundle, inputs: dict) -> str:
    audit, val = inputs.get("audit"), inputs.get("val")
    parts = []
    if val:
        parts.append(f"validation {_score(val)}")
    if audit:
        parts.append(f"test {_score(audit['metrics'])} on {audit['data']}")
    cal = bundle.calibration
    if "ece_after" in cal:
        parts.append(f"temperature {cal['temperature']:.2f} lowers validation ECE from "
                     f"{cal['ece_before']:.3f} to {cal['ece_after']:.3f}")
    elif "bce_after" in cal:
        parts.append(f"a temperature and a bias a label take validation BCE from {cal['bce_before']:.3f} to "
                     f"{cal['bce_after']:.3f}, and each label has its own decision threshold")
    return "; ".join(parts) + "." if parts else "Not evaluated."


def _audit_limits(audit: dict, limits: list[str], not_run: list[str]) -> None:
    multilabel = audit.get("task") == "multilabel"
    metric, name = ("map", "mAP") if multilabel else ("accuracy", "accuracy")
    if audit["calibration"]["ece_after"] > ECE_LIMIT:
        limits.append(f"confidence is off by {audit['calibration']['ece_after']:.3f} on average "
                      f"(test {'class-wise ' if multilabel else ''}ECE after temperature scaling)")
    for f in audit["subgroups"].get("flagged", []):
        limits.append(f"{f['column']} = {f['group']}: {name} {f[metric]:.3f} against "
                      f"{f['overall_' + metric]:.3f} overall ({f['count']} images)")
    rob = audit.get("robustness")
    if rob:
        clean, mean = ((rob["clean_map"], rob["mean_corruption_map"]) if multilabel
                       else (rob["clean_accuracy"], rob["mean_corruption_accuracy"]))
        if rob["relative_drop"] > ROBUSTNESS_DROP_LIMIT:
            limits.append(f"corruptions cut {name} by {100 * rob['relative_drop']:.0f}% on average "
                          f"(mean corruption {name} {mean:.3f})")
        weak = [n for n, r in rob["corruptions"].items() if r["mean"] < (1 - CORRUPTION_LIMIT) * clean]
        if weak:
            limits.append("weakest under: " + ", ".join(weak))
    else:
        not_run.append("corruption robustness")
    adv = audit.get("adversarial")
    if adv:
        pgd = adv["attacks"].get("pgd", {}).get(ADVERSARIAL_EPS)
        if pgd is not None:
            limits.append(f"a {ADVERSARIAL_EPS} pixel perturbation (PGD) leaves {name} {pgd:.3f}")
    else:
        not_run.append("adversarial attacks (clarivis audit --adversarial)")
    if multilabel:  # open-set rejection needs one softmax answer an image
        return
    open_set = audit.get("open_set")
    if open_set and open_set.get("rejection_rate_unknown") is not None:
        limits.append(f"{100 * (1 - open_set['rejection_rate_unknown']):.0f}% of images from unknown "
                      "classes still get a class label")
    elif open_set is not None:
        not_run.append("rejection of unknown classes (test data held no other classes)")
