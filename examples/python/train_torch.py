"""A small torch model trained on batches streamed from M2M: a linear classifier of which of 10 clusters
a splat came from, weighted by the data lake's importance weights, with Langevin-generated rows as
augmentation. Two DataLoader workers read the engine's directory read-only.

    cargo xtask python            # builds the wheel into target/py-venv (once)
    target/py-venv/bin/python examples/python/train_torch.py
"""

import tempfile

import numpy as np
import torch

import m2m

DIM, CLUSTERS, ROWS = 64, 10, 20_000


def main():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    labels = rng.integers(0, CLUSTERS, ROWS)
    vectors = centres[labels] + 0.8 * rng.standard_normal((ROWS, DIM)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        engine = m2m.create_m2m(dim=DIM, data_dir=f"{tmp}/lake", durable=False)
        ids = engine.add_splats(vectors)
        engine.build_index()
        engine.flush()
        label_of = torch.from_numpy(labels[np.argsort(ids)].astype(np.int64))

        ds = engine.export_to_dataloader(batch_size=512, importance_sampling=True, generate_samples=True, epochs=4)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        model = torch.nn.Linear(DIM, CLUSTERS)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        losses = []
        for step, batch in enumerate(loader):
            y = label_of[batch["ids"]]  # a generated row carries its seed's id, so its label
            loss = (torch.nn.functional.cross_entropy(model(batch["mu"]), y, reduction="none") * batch["weights"]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step % 40 == 0:
                print(f"step {step:4d}  loss {loss.item():.3f}")
        first, last = np.mean(losses[:10]), np.mean(losses[-10:])
        print(f"{len(losses)} steps; mean loss of the first 10 {first:.3f}, of the last 10 {last:.3f}")
        assert last < 0.5 * first, "the loss must fall"


if __name__ == "__main__":
    main()
