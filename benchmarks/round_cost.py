"""What one hospital's round costs in each kind of round: local training time and the bytes of the
reply, for a plain round, a FedBABU round (``frozen_classifier``) and a classifier re-training
round (``classifier_only``).

    .venv/bin/python benchmarks/round_cost.py --model cnn --image-size 28 --images 2000
    .venv/bin/python benchmarks/round_cost.py --images 12 --epochs 5 --batch-size 8 --optimizer adam --repeat 50

(the second: a site of the 1,000-site DP runs, ten steps a round, where a round's fixed costs count).

The images are random pixels of the given size (the cost of a step does not depend on what the
pixels show); each kind of round is trained once to trace its step, then timed over ``--repeat``
further rounds from the same global weights (the median is printed). The reply is encoded as a
hospital encodes it (:func:`hemafed.exchange.omit_unchanged`: the tensors sent back unchanged are
left out) and its size measured. ``download`` is the next request's size when the next global
model is this round's result (one hospital's) and the hospital holds this round's global model
(:func:`hemafed.exchange.refer_to_held`: the tensors it holds are referred to, not sent);
``whole`` is the global model sent in full (a first request, or a hospital that restarted).
TensorFlow uses ``--threads`` threads (a hospital container's ``TF_THREADS``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

KINDS = {
    "plain": {},
    "fedbabu": {"frozen_classifier": True},
    "classifier": {"classifier_only": True},
}


def measure(model_name: str, image_size: int, num_classes: int, images: int, batch_size: int,
            repeat: int, seed: int = 0, *, epochs: int = 1, optimizer: str = "sgd") -> list[dict[str, float | str]]:
    from hemafed.exchange import HELD_KEY, UNCHANGED_KEY, ModelExchange, omit_unchanged, refer_to_held, tensor_digest
    from hemafed.models import build_model, get_exchanged, set_exchanged
    from hemafed.schemas import FitConfig
    from hemafed.training import LocalTrainer

    rng = np.random.default_rng(seed)
    x = rng.random((images, image_size, image_size, 3), dtype=np.float32)
    y = (np.arange(images) % num_classes).astype(np.int32)
    trainer = LocalTrainer(build_model(model_name, num_classes, image_size, seed=seed))
    sent = [w.copy() for w in get_exchanged(trainer.model)]
    whole = len(ModelExchange(weights=sent, round=1).to_bytes())
    held = frozenset(tensor_digest(w) for w in sent)
    out = []
    for kind, flags in KINDS.items():
        config = FitConfig(local_epochs=epochs, batch_size=batch_size,
                           learning_rate=1e-3 if optimizer == "adam" else 0.01, optimizer=optimizer,
                           augment=False, **flags)
        times, steps = [], 0
        for r in range(repeat + 1):  # round 0 traces the step: not timed
            set_exchanged(trainer.model, sent)
            t0 = time.perf_counter()
            result = trainer.fit(x, y, config, seed=r, num_classes=num_classes)
            if r:
                times.append(time.perf_counter() - t0)
            steps = result.steps
        trained = get_exchanged(trainer.model)
        kept, left_out = omit_unchanged(trained, sent)
        reply = ModelExchange(weights=kept, round=1, num_examples=images,
                              extra={UNCHANGED_KEY: left_out} if left_out else {})
        carried, refs = refer_to_held(trained, held)
        request = ModelExchange(weights=carried, round=2, extra={HELD_KEY: refs} if refs else {})
        seconds = statistics.median(times)
        out.append({"kind": kind, "seconds": seconds, "images_per_second": images / seconds, "steps": steps,
                    "upload_bytes": len(reply.to_bytes()), "download_bytes": len(request.to_bytes()),
                    "whole_bytes": whole, "tensors_sent": len(kept), "tensors": len(sent)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--images", type=int, default=2000, help="local training images")
    p.add_argument("--epochs", type=int, default=1, help="local epochs a round")
    p.add_argument("--optimizer", choices=["sgd", "sgdm", "adam"], default="sgd",
                   help="the client optimizer (a fresh one every round, as at a hospital)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per kind (median printed)")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads")
    a = p.parse_args(argv)
    if min(a.image_size, a.classes, a.images, a.epochs, a.batch_size, a.repeat, a.threads) < 1 or a.classes < 2:
        p.error("sizes, counts and threads must be positive (at least 2 classes)")
    from hemafed.training import configure_threads

    configure_threads(a.threads, a.threads)
    rows = measure(a.model, a.image_size, a.classes, a.images, a.batch_size, a.repeat,
                   epochs=a.epochs, optimizer=a.optimizer)
    print(f"one hospital's round: {a.model}, {a.image_size} px, {a.classes} classes, {a.images} images x "
          f"{a.epochs} epoch(s), batch {a.batch_size}, {a.optimizer}, no augmentation, {a.threads} TF thread(s); "
          f"median of {a.repeat}")
    print(f"{'round':>11} {'train s':>8} {'img/s':>7} {'steps':>6} {'upload':>11} {'download':>11} {'whole':>11} "
          f"{'tensors up':>11}")
    for r in rows:
        print(f"{r['kind']:>11} {r['seconds']:>8.2f} {r['images_per_second']:>7.0f} {r['steps']:>6} "
              f"{r['upload_bytes']:>11,} {r['download_bytes']:>11,} {r['whole_bytes']:>11,} "
              f"{r['tensors_sent']:>5}/{r['tensors']:<5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
