"""One training loop for every learned mechanism."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from auctionlab.attackers.base import (
    deviation_profiles,
    expand_public,
    own_utility,
    project_deviations,
)
from auctionlab.attackers.best_response import install_best_response
from auctionlab.errors import (
    STOP_SIGNALS,
    ConfigError,
    InterruptedRunError,
    NonFiniteError,
    raise_interrupt,
)
from auctionlab.training.constrained_erm import violations as measure_violations
from auctionlab.training.constraints import ConstraintHandler, DualState, Unconstrained
from auctionlab.types import Outcome, Types

log = logging.getLogger("auctionlab")

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def _duration(seconds: float) -> str:
    """``seconds`` as ``42s``, ``3m07s`` or ``2h05m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(
    window: dict[str, float],
    iteration: int,
    iterations: int,
    rate: float,
    objective: str = "train_revenue",
    constraint: dict[str, float] | None = None,
) -> str:
    """One compact progress line for ``train.log`` (the bar's numbers, plus speed and ETA).

    Example: ``iteration 40/200: revenue 0.5412, regret 1.2e-03, gamma 0.31, regret_budget
    0.02, 85.3 it/s, eta 2s``.

    Args:
        window: the log window's means (``train_*`` keys).
        iteration: iterations done.
        iterations: iterations in all.
        rate: iterations per second over the window.
        objective: the key of the trained objective in ``window``.
        constraint: the constraint handler's metrics (multipliers, budget).

    """
    parts = [f"iteration {iteration}/{iterations}:"]
    fields = [f"{objective.removeprefix('train_')} {window.get(objective, math.nan):.4f}"]
    if "train_regret" in window:  # only where an attacker measured it
        fields.append(f"regret {window['train_regret']:.2e}")
    fields += [f"{k} {v:.3g}" for k, v in (constraint or {}).items()]
    fields.append(f"{rate:.3g} it/s")
    eta = (iterations - iteration) / rate if rate > 0 else math.inf
    fields.append(f"eta {_duration(eta)}" if math.isfinite(eta) else "eta ?")
    return " ".join(parts) + " " + ", ".join(fields)


class Trainer:
    """Maximise revenue under a regret constraint (or none, for DSIC-by-design mechanisms).

    Each iteration: draw a batch (from a fixed training set, as in the original recipe, or
    fresh), let the attacker improve each bidder's misreport (warm-started from the cache
    when ``cache_misreports``), evaluate truthful and deviation profiles in one forward pass,
    take a primal step on ``constraint.loss`` and let the constraint update its multipliers.

    Args:
        mechanism: a learnable mechanism.
        env: the environment.
        attacker: misreport search used for the regret estimate.
        constraint: the constraint handler.
        iterations: primal steps.
        batch_size: profiles per step.
        num_samples: size of the fixed training set; ``None`` draws fresh profiles each step.
        lr: optimizer learning rate.
        optimizer: ``adam`` or ``sgd``.
        cache_misreports: warm-start each profile's misreports from its last visit.
        log_every: iterations per logged point (window means); with ``progress`` off, also
            one :func:`progress_line` in the log per point.
        device: where everything lives.
        seed: seeds the data and the restarts.
        progress: show a progress bar.
        detect_anomaly: run every step under ``torch.autograd.detect_anomaly`` (slow; names
            the operation that first produced NaN in the backward pass).
        lr_decay_start: fraction of ``iterations`` after which the learning rate decays (a
            half cosine) to ``lr * lr_decay_to`` at the last iteration; ``None``: constant.
        lr_decay_to: final learning rate as a fraction of ``lr``.

    """

    def __init__(
        self,
        mechanism,
        env,
        attacker,
        constraint: ConstraintHandler,
        iterations: int,
        batch_size: int,
        num_samples: int | None = None,
        lr: float = 1e-3,
        optimizer: str = "adam",
        cache_misreports: bool = True,
        log_every: int = 100,
        device: torch.device | str = "cpu",
        seed: int = 0,
        progress: bool = True,
        detect_anomaly: bool = False,
        lr_decay_start: float | None = None,
        lr_decay_to: float = 0.1,
    ) -> None:
        if iterations < 1 or batch_size < 1:
            raise ConfigError(
                f"train: iterations={iterations} and batch_size={batch_size} must be >= 1"
            )
        if num_samples is not None and num_samples < batch_size:
            raise ConfigError(f"train.num_samples={num_samples} must be >= batch_size={batch_size}")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"train.optimizer={optimizer} is not valid; choose one of {', '.join(OPTIMIZERS)}"
            )
        self.device = torch.device(device)
        self.mechanism, self.env, self.attacker = mechanism.to(self.device), env, attacker
        if mechanism.dsic_by_design:
            constraint = Unconstrained()  # nothing to constrain; skip the attacker's cost
        self.constraint = constraint
        self.iterations, self.batch_size, self.num_samples = iterations, batch_size, num_samples
        # Attackers that always start from the truth (local regret) need no cache.
        self.cache_misreports = cache_misreports and num_samples is not None and attacker.uses_init
        self.log_every, self.progress = max(1, log_every), progress
        self.detect_anomaly = detect_anomaly
        self.stop_requested = False
        self.stop_signal: int = signal.SIGINT  # the signal that asked to stop
        if lr_decay_start is not None and not (
            0.0 <= lr_decay_start < 1.0 and 0.0 < lr_decay_to <= 1.0
        ):
            raise ConfigError(
                f"trainer.lr_decay_start={lr_decay_start} must be in [0, 1) and "
                f"trainer.lr_decay_to={lr_decay_to} in (0, 1]"
            )
        self.lr, self.lr_decay_start, self.lr_decay_to = float(lr), lr_decay_start, lr_decay_to
        self.optimizer = OPTIMIZERS[optimizer](self.mechanism.parameters(), lr=lr)
        self.constraint.setup(env.n_bidders, iterations, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        if env.training_adversary() is not None and env.best_response is None:
            install_best_response(env)  # built here when the env did not come from a config
        self.iteration = 0
        self.train_seconds = 0.0
        self.dataset: Types | None = None
        self.cache: Tensor | None = None
        self._order: Tensor | None = None
        if num_samples is not None:
            self.dataset = self._sample(num_samples)
            if self.cache_misreports:
                self.cache = env.report_space.draw(num_samples, self.generator).to(self.device)

    # -- data ---------------------------------------------------------------------------
    def _sample(self, batch: int) -> Types:
        # An env may train on another distribution than it tests on ([zeng2025rpf]'s perturbed or
        # adversarial training data); ``Env.sample_training`` defaults to ``sample``.
        return self.env.sample_training(batch, self.generator)

    def _batch(self) -> tuple[Types, Tensor | None]:
        if self.dataset is None:
            return self._sample(self.batch_size), None
        per_epoch = self.num_samples // self.batch_size
        k = self.iteration % per_epoch
        if k == 0 or self._order is None:
            self._order = torch.randperm(
                self.num_samples, generator=self.generator, device=self.device
            )
        index = self._order[k * self.batch_size : (k + 1) * self.batch_size]
        return self.dataset[index], index

    def learning_rate(self, iteration: int) -> float:
        """The primal learning rate at ``iteration`` (a function of it, so resuming keeps it)."""
        if self.lr_decay_start is None:
            return self.lr
        start = self.lr_decay_start * self.iterations
        progress = min(1.0, max(0.0, (iteration - start) / max(1.0, self.iterations - start)))
        factor = self.lr_decay_to + (1.0 - self.lr_decay_to) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )
        return self.lr * factor

    # -- one step -------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One primal-dual iteration; returns the batch's revenue, regret and loss.

        Raises:
            NonFiniteError: NaN or inf in the loss or the constraint's multipliers; nothing of
                the failing step is applied to the multipliers.

        """
        if not self.detect_anomaly:
            return self._step()
        try:
            with torch.autograd.detect_anomaly(check_nan=True):
                return self._step()
        except RuntimeError as err:  # autograd names the backward op that produced NaN
            if "nan" not in str(err).lower():
                raise
            first = str(err).strip().splitlines()[0]
            raise NonFiniteError(f"iteration {self.iteration}: {first}") from err

    def _step(self) -> dict[str, float]:
        types, index = self._batch()
        values = types.values
        B, n, m = values.shape
        self.mechanism.train()
        if self.constraint.needs_regret:
            init = None if self.cache is None else self.cache[index].unsqueeze(0)
            attack = self.attacker.attack(
                self.mechanism, self.env, types, self.generator, init=init, truthful=False
            )
            misreports = project_deviations(self.env, types, attack.misreports.detach())
            if self.cache is not None:
                self.cache[index] = misreports
            # Truthful and deviation profiles in one forward pass.
            profiles = torch.cat(
                [values, deviation_profiles(values, misreports[None]).reshape(-1, n, m)]
            )
            outcome = self.mechanism(profiles, expand_public(types.public, n + 1))
            truthful = Outcome(outcome.allocation[:B], outcome.payment[:B])
            truthful_utility = self.env.utility(truthful, values)  # [B, n]
            deviating = Outcome(outcome.allocation[B:], outcome.payment[B:])
            deviation_utility = own_utility(self.env, deviating, values, 1)[0]  # [B, n]
            gain = (deviation_utility - truthful_utility).clamp_min(0.0)  # [B, n]
            if self.attacker.two_sided:
                # Reverse LIC condition at the same b_i: a bidder of type b_i must not prefer
                # the truthful profile's outcome to its own.
                reverse = (
                    self.env.utility(truthful, misreports)
                    - own_utility(self.env, deviating, misreports, 1)[0]
                )
                gain = gain + reverse.clamp_min(0.0)
            regret = gain.mean(0)
        else:
            truthful = self.mechanism(values, types.public)
            regret = torch.zeros(n, device=self.device)
        revenue = truthful.payment.sum(-1).mean()
        # The objective is revenue unless the env defines its own (allocation: log-NSW).
        objective_of = self.env.objective
        objective = objective_of(truthful, types) if objective_of is not None else revenue
        violations = {}
        if self.constraint.needs_violations:  # IR / fairness ([lemma2026certified] §5)
            violations = measure_violations(self.env, truthful, types)
        loss = self.constraint.loss(objective, {"regret": regret, **violations})
        auxiliary = self.mechanism.auxiliary_loss(values, truthful)
        if auxiliary is not None:
            loss = loss + auxiliary
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"non-finite loss at iteration {self.iteration}: revenue={float(revenue):.4g}, "
                f"regret={[round(r, 6) for r in regret.tolist()]}"
                + (f", auxiliary={float(auxiliary):.4g}" if auxiliary is not None else "")
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.lr_decay_start is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(self.iteration)
        self.optimizer.step()
        self.constraint.dual_step(
            DualState(
                self.iteration,
                objective.detach(),
                regret.detach(),
                mechanism=self.mechanism,
                env=self.env,
                attacker=self.attacker,
            )
        )
        multipliers = self.constraint.metrics()
        if any(not math.isfinite(v) for v in multipliers.values()):
            raise NonFiniteError(
                f"non-finite constraint multipliers at iteration {self.iteration}: {multipliers}"
            )
        self.iteration += 1
        metrics = {"revenue": revenue.item(), "loss": loss.item()}
        if objective_of is not None:
            metrics[self.env.objective_name] = objective.item()
        if auxiliary is not None:
            metrics["auxiliary_loss"] = auxiliary.item()
        if self.constraint.needs_regret:  # no regret number without the attacker behind it
            metrics["regret"] = regret.detach().mean().item()
        for key, value in violations.items():
            metrics[f"{key}_violation"] = value.detach().mean().item()
        return metrics

    def check_parameters(self) -> None:
        """Raise ``NonFiniteError`` when any weight is NaN or inf (checked before checkpoints)."""
        for name, parameter in self.mechanism.named_parameters():
            if not bool(torch.isfinite(parameter).all()):
                raise NonFiniteError(
                    f"non-finite weights in {name} after iteration {self.iteration}"
                )

    # -- the loop ---------------------------------------------------------------------------
    def fit(
        self, on_log: Callable[[dict[str, float], int], None] | None = None
    ) -> dict[str, float]:
        """Run until ``iterations``; call ``on_log(metrics, step)`` every ``log_every`` steps.

        A first Ctrl-C (SIGINT) or SIGTERM finishes the current step and raises
        ``InterruptedRunError`` with the trainer in a consistent state (the caller saves a
        checkpoint); a second one stops at once.

        Returns:
            The last window's means plus ``train_seconds`` and ``seconds_per_iteration``.

        Raises:
            NonFiniteError: NaN or inf in the loss, multipliers or logged metrics.
            InterruptedRunError: Ctrl-C or SIGTERM.

        """
        with self._interruptible():
            return self._fit(on_log)

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """SIGINT and SIGTERM set ``stop_requested`` instead of raising mid-step.

        Only in the main thread, and not for a signal the process ignores (a background job
        of a non-interactive shell ignores SIGINT). After the first signal, a second one of
        either kind raises :class:`~auctionlab.errors.Interrupted` at once.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        # An ignored signal stays ignored; one with a handler set outside Python (None) cannot
        # be restored afterwards, so it is left alone too.
        caught = [s for s, handler in previous.items() if handler not in (signal.SIG_IGN, None)]

        def request_stop(signum, frame) -> None:
            self.stop_requested, self.stop_signal = True, signum
            for s in caught:  # a second signal: now
                signal.signal(s, raise_interrupt)

        for s in caught:
            signal.signal(s, request_stop)
        try:
            yield
        finally:
            for s in caught:
                signal.signal(s, previous[s])

    def _fit(
        self, on_log: Callable[[dict[str, float], int], None] | None = None
    ) -> dict[str, float]:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.iterations,
            initial=self.iteration,
            desc="train",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        sums: dict[str, float] = {}
        count = 0
        last: dict[str, float] = {}
        start_iteration = self.iteration
        started = window_started = time.perf_counter()
        objective_key = (
            "train_revenue" if self.env.objective is None else f"train_{self.env.objective_name}"
        )
        while self.iteration < self.iterations:
            metrics = self.step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if self.iteration % self.log_every == 0 or self.iteration == self.iterations:
                last = {f"train_{k}": v / count for k, v in sums.items()}
                last.update(self.constraint.metrics())
                if any(not math.isfinite(v) for v in last.values()):
                    raise NonFiniteError(
                        f"non-finite training metrics at iteration {self.iteration}: {last}"
                    )
                shown = {"rev": f"{last['train_revenue']:.4f}"}
                if "train_regret" in last:
                    shown["rgt"] = f"{last['train_regret']:.2e}"
                shown.update({k: f"{v:.3g}" for k, v in self.constraint.metrics().items()})
                bar.set_postfix(shown)
                now = time.perf_counter()
                if not self.progress:  # without a terminal the bar is off: train.log gets a line
                    log.info(
                        "%s",
                        progress_line(
                            last,
                            self.iteration,
                            self.iterations,
                            count / max(now - window_started, 1e-9),
                            objective_key,
                            self.constraint.metrics(),
                        ),
                    )
                window_started = now
                if on_log is not None:
                    on_log(last, self.iteration)
                sums, count = {}, 0
            bar.update(1)
            if self.stop_requested:
                bar.close()
                self.train_seconds += time.perf_counter() - started
                raise InterruptedRunError(
                    f"interrupted at iteration {self.iteration} "
                    f"({signal.Signals(self.stop_signal).name})",
                    self.stop_signal,
                )
        bar.close()
        self.train_seconds += time.perf_counter() - started
        done = self.iteration - start_iteration
        if self.constraint.needs_regret:  # the budget behind every train_regret above
            budget = self.attacker.budget
            last["train_attack_restarts"] = float(budget["restarts"])
            last["train_attack_steps"] = float(budget["steps"])
            last["train_attack_cached_starts"] = float(self.cache is not None)
        last["train_seconds"] = self.train_seconds
        last["seconds_per_iteration"] = self.train_seconds / max(1, done)
        return last

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain data only, so checkpoints load with ``weights_only=True``."""
        return {
            "mechanism": self.mechanism.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "constraint": self.constraint.state_dict(),
            "iteration": self.iteration,
            "train_seconds": self.train_seconds,
            "cache": self.cache,
            "generator": self.generator.get_state(),
            "order": self._order,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` (resume)."""
        self.mechanism.load_state_dict(state["mechanism"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.constraint.load_state_dict(state["constraint"])
        self.iteration, self.train_seconds = int(state["iteration"]), float(state["train_seconds"])
        if state.get("cache") is not None:
            self.cache = state["cache"].to(self.device).clone()
        self.generator.set_state(state["generator"])
        self._order = state.get("order")
