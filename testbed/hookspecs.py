"""The hooks a plugin implements: one ``register_*`` hook per component kind.

Each hook receives ``register(name, factory, help)``; call it once per component.
The factory's keyword-only arguments (with defaults) are the component's parameters,
settable from an experiment file; its positional arguments are the context the core
passes in. Every hook is documented in docs/writing-plugins.md (a test checks this).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("testbed")
hookimpl = pluggy.HookimplMarker("testbed")


@hookspec
def register_datasets(register):
    """Datasets. Factory: ``f(request: DataRequest, **params) -> InMemoryData | StreamingData``."""


@hookspec
def register_preprocessors(register):
    """Input preprocessing. Factory: ``f(stats: DataStats, **params) -> Preprocess``
    (``.apply(float_batch)`` and ``.pixel_scale``: what one raw pixel unit becomes)."""


@hookspec
def register_augmentations(register):
    """Train augmentations and test-time views. Factory: ``f(ctx: AugmentContext, **params)``
    returning an ``Augmentation`` (train: ``batch, generator -> batch``) or a ``TestViews``
    (test: ``batch -> views [V, B, C, H, W]``, softmax averaged over V)."""


@hookspec
def register_architectures(register):
    """Network architectures, chosen by ``model.architecture``. Factory: ``f(**params) -> Architecture``
    (``testbed.model.Architecture``: ``build(request) -> nn.Module``); ``register`` may declare
    ``slots``, ``placements`` and ``defaults``."""


@hookspec
def register_activations(register):
    """Activations. Factory: ``f(**params) -> nn.Module`` (elementwise)."""


@hookspec
def register_normalizations(register):
    """Normalizations after conv1 and conv2. Factory: ``f(channels: int, **params) -> nn.Module``."""


@hookspec
def register_poolings(register):
    """Pooling after norm1, norm2 and conv5. Factory: ``f(**params) -> nn.Module`` that maps
    55->27->13->6 at 227 px and 32->16->8->4 at 32 px, like the paper's z=3, s=2 pooling."""


@hookspec
def register_inits(register):
    """Weight initialisation rules. Factory: ``f(**params) -> callable(layers)`` where
    ``layers`` is a list of ``(name, module)`` pairs, names ``conv1``..``fc8``."""


@hookspec
def register_placements(register):
    """Where towers live and how they connect. Factory: ``f(**params) -> Placement``."""


@hookspec
def register_optimizers(register):
    """Optimizers. Factory: ``f(params_iterable, **params) -> torch.optim.Optimizer``."""


@hookspec
def register_executors(register):
    """Where a grid's jobs run. Factory: ``f(**params) -> Executor`` (``testbed.runner.Executor``:
    ``run(jobs, driver, stop, dist) -> bool``, True when stopped early). Chosen by ``--executor``."""


@hookspec
def register_trackers(register):
    """Where a run's numbers go besides the store (TensorBoard, MLflow, ...). Factory:
    ``f(**params) -> Tracker`` (``testbed.tracking.Tracker``: ``run_started``, ``job_started``,
    ``epoch``, ``job_finished``, ``run_finished``, called in the driver). Chosen by ``[track]`` or
    ``--track``; refuse a missing package with ``ValueError`` (exit 2, one line)."""


@hookspec
def register_schedules(register):
    """Learning-rate schedules. Factory: ``f(optimizer, epochs: int, **params) -> Schedule``
    (``.step(epoch_metrics)`` once per epoch; ``state_dict``/``load_state_dict``)."""
