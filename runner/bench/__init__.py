"""``make bench``: measured figures, each as a ratio of two things timed side by side in one process.

Section ``loop``: what the runner's training loop costs over the model's own compute. One epoch of
``simple_cnn`` on full Fashion-MNIST (Debian's dataset-fashion-mnist), three ways: (a) the runner's
loop (``train_one_epoch`` over ``datasets.Batches``), (b) a minimal hand-written loop over the same
preloaded tensors, same model and batch size, (c) the usual ``torch.utils.data.DataLoader`` over
torchvision's dataset with ``transforms.ToTensor()``.

Section ``pool``: forward + backward time and peak memory of every local pooling option (built from
its YAML, as a run builds it) on one (128, 64, 32, 32) float32 tensor, relative to ``max_pool2d``.
Peak memory is the process's peak resident size during the call over its size before it (Linux
``VmHWM``, reset through ``/proc/self/clear_refs``), with glibc told to return every large block to
the system at once, so it counts what the call allocates: output, saved tensors, input gradient.

Section ``norm``: forward + backward time of every normalization block (built from its YAML) on one
(128, 64, 32, 32) float32 tensor in training mode, relative to ``batch``. Weight and spectral norm change
the convolutions, not the block: their figure adds computing (and back-propagating through) one
reparametrized 64→64 3×3 conv weight to their inner block's time.

Section ``shapes``: the same layers at the shapes they have in real models, the layers of each kind of simple_cnn
on mnist5k and of resnet20 on CIFAR-10 (``model.downsample=pool``), forward + backward at a training batch summed
over the model's layers, relative to max_pool2d and batch.

Section ``epoch``: one training epoch of the default run (simple_cnn on mnist5k) with each pooling and each norm
option, relative to the default run's: what a user of the option feels (norm=fixup against resnet20 with batch).

Section ``sweep``: wall time of the same 8-run grid on mnist5k (``-m pooling=max,avg seed=0,1,2,3
epochs=2``) run by ``python -m runner`` one run after another and with ``launcher=local``, and their ratio.

Section ``plan``: what a user waits for before anything trains: planning a 200-cell grid in-process, the
whole command re-running that grid when every run is complete, rejecting a 200-cell grid whose last cell
is bad, previewing it (``--dry-run``) before any of it ran, with the record of the code and the config files
(runner/facts.py) and without, ``python -m runner --cfg job`` less the
interpreter's own start, and a tuning trial's plan after its method's first.

Section ``records``: one run's finish (its rows into the tables) with 10 and with 1,000 runs already
recorded, and a full rebuild from 1,000 run folders for reference.

Section ``threads``: one epoch of the default run with torch on every usable core (the default) and on one
thread, on an idle machine and with another process spinning on one core (a shared machine).

Section ``seeds``: not a timing. Sequential finals (``tune.finals=sequential``, looks at 6, 8, …, 20 seeds) against
the fixed design of equal power: over 2,000 simulated studies per effect (normal seed noise, effect d_z in seed
standard deviations), the share decided and the mean seeds used, and the fewest fixed seeds whose power (the same
rule, ``stats.rule_power``) is as high.

Timed things alternate for ``--rounds`` rounds and each keeps its fastest time, since a shared
machine's noise only ever adds time. The figures are merged into results/bench.json.
"""
