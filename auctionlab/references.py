"""The bibliography: every paper auctionlab reproduces, compares against or builds on.

Code, configs and docs cite a paper by its key, ``[key]`` in prose and comments, ``cite: key``
in YAML (``experiment.cite``, and each row of ``experiment.table.reference``). Keys follow
``<firstauthor><year><firstsignificanttitleword>`` in lowercase ASCII and never change, so a
link ``references.md#<key>`` stays valid. ``docs/references.md`` is generated from
:func:`markdown` (``python scripts/references_page.py``); a test keeps the two equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from auctionlab.errors import ConfigError


@dataclass(frozen=True)
class Reference:
    """One bibliography entry.

    Attributes:
        key: the stable citation key (``curry2020certifying``).
        authors: the authors as printed (initials first).
        year: year of publication (or of the version auctionlab follows).
        title: the title.
        venue: journal, proceedings or report series.
        used_for: what auctionlab takes from it (experiments, mechanisms, envs, bounds).
        url: where to read it, when there is a stable address.
        note: what identifies it otherwise (report number, status).

    """

    key: str
    authors: str
    year: int
    title: str
    venue: str
    used_for: str
    url: str = ""
    note: str = ""

    def citation(self) -> str:
        """The full citation on one line: authors, title, venue, year, note and address."""
        parts = [f'{self.authors}. "{self.title}". {self.venue}, {self.year}.']
        if self.note:
            parts.append(f"{self.note}.")
        if self.url:
            parts.append(f"<{self.url}>")
        return " ".join(parts)


_ENTRIES = (
    Reference(
        key="lemma2026certified",
        authors="L. Lemma",
        year=2026,
        title="Certified Neural Mechanisms: Finite-Sample Guarantees for Approximate IC, IR, "
        "and Fairness",
        venue="Working paper",
        used_for="The certified equivariant mechanism (DeepSets / attention with a priori "
        "Lipschitz bounds, Sinkhorn allocation), constrained ERM over regret, IR and fairness, "
        "the holdout statistical certificate (`certifier=statistical`: concentration slack, "
        "strengthened best-response oracle, oracle gap), private budgets, contextual ad "
        "allocation with a TV-fairness functional and volume-discount procurement; experiments "
        "`cert_benchmarks`, `cert_scaling`, `cert_fairness`, `cert_budgets`, "
        "`cert_procurement`.",
    ),
    Reference(
        key="lemma2026solver",
        authors="L. Lemma",
        year=2026,
        title="Solver-Backed Neural Combinatorial Auctions: Exact Feasibility, Auditable "
        "Allocations, and Regret-Stability Bounds",
        venue="Working paper",
        used_for="Combinatorial auctions over a bundle language, the solver-backed mechanism "
        "(exact winner determination with HiGHS), its gradient strategies (straight-through, "
        "entropic LP relaxation, cutting-plane witnesses), the greedy, fixed-alpha, affine "
        "maximiser and soft-feasibility baselines, the hybrid attacker, eta-optimal solving and "
        "the audit log with replay; experiments `ca_frontier`, `ca_baselines`, `ca_stress`, "
        "`ca_gradients`, `ca_tolerance`, `ca_scaling`.",
    ),
    Reference(
        key="zeng2025rpf",
        authors="S. Zeng, S. Bhatt, A. Koppel, S. Ganesh",
        year=2025,
        title="Regularized Proportional Fairness Mechanism for Resource Allocation Without Money",
        venue="Transactions on Machine Learning Research (TMLR)",
        used_for="Payment-free allocation of divisible resources: the allocation env (eq. 17), "
        "PF and the PF-PA mixture, RPF-Net with its batched regularised-PF solver and implicit "
        "gradients, the primal-dual trainer (Algorithm 1), NSW / exploitability / efficiency "
        "metrics; experiments `rpf_table1`, `rpf_table2`, `rpf_fig1`, `rpf_fig3`, `rpf_fig5`, "
        "`rpf_stages`.",
        url="https://openreview.net/forum?id=K85nJ60lDR",
    ),
    Reference(
        key="okada2025lic",
        authors="G. Okada",
        year=2025,
        title="Accelerating Automated Auction Design using Sufficiency of Local Incentive "
        "Compatibility",
        venue="UTMD Working Paper UTMD-102, University of Tokyo",
        used_for="Local regret (a few gradient steps from the true valuation, `attacker=local`) "
        "and the two local-IC conditions it trains and measures; "
        "experiment `lic_table1` (RegretNet-Standard vs RegretNet-Local).",
    ),
    Reference(
        key="curry2020certifying",
        authors="M. J. Curry, P.-Y. Chiang, T. Goldstein, J. P. Dickerson",
        year=2020,
        title="Certifying Strategyproof Auction Networks",
        venue="Advances in Neural Information Processing Systems 33 (NeurIPS)",
        used_for="The certifiable RegretNet (ReLU trunk, sparsemax allocation, distillation), "
        "its exact mixed-integer encoding and per-(profile, bidder) regret certificates "
        "(`certifier=mip`), the ReLU-stability regulariser at training time and the best-bid "
        "figure; experiments `curry_table1`, `curry_table2`.",
    ),
    Reference(
        key="dutting2019optimal",
        authors="P. Dütting, Z. Feng, H. Narasimhan, D. C. Parkes, S. S. Ravindranath",
        year=2019,
        title="Optimal Auctions through Deep Learning",
        venue="Proceedings of the 36th International Conference on Machine Learning (ICML)",
        used_for="RegretNet and RochetNet, the augmented-Lagrangian trainer, the PGD "
        "misreport attacker and the standard additive, unit-demand and combinatorial "
        "settings; the learned-auction numbers of `learned_additive` and the MyersonNet "
        "single-item settings (exponential, irregular) of `myerson_single_item`.",
    ),
    Reference(
        key="rahme2021permutation",
        authors="J. Rahme, S. Jelassi, J. Bruna, S. M. Weinberg",
        year=2021,
        title="A Permutation-Equivariant Neural Network Architecture for Auction Design",
        venue="Proceedings of the AAAI Conference on Artificial Intelligence (AAAI)",
        used_for="EquivariantNet (`mechanism=equivariant_net`): exchangeable layers over the "
        "bidder x item grid.",
    ),
    Reference(
        key="ivanov2022optimal",
        authors="D. Ivanov, I. Safiulin, I. Filippov, K. Balabaeva",
        year=2022,
        title="Optimal-er Auctions through Attention",
        venue="Advances in Neural Information Processing Systems 35 (NeurIPS)",
        used_for="RegretFormer (`mechanism=regretformer`: attention across items and across "
        "bidders) and the regret-budget trainer (`trainer=regret_budget`).",
    ),
    Reference(
        key="myerson1981optimal",
        authors="R. B. Myerson",
        year=1981,
        title="Optimal Auction Design",
        venue="Mathematics of Operations Research 6(1)",
        used_for="Myerson's optimal single-item auction with ironing (`mechanism=myerson`), "
        "item-wise and bundled Myerson, and the closed-form revenues of `classical_revenue` "
        "and `myerson_single_item`.",
    ),
    Reference(
        key="manelli2006bundling",
        authors="A. M. Manelli, D. R. Vincent",
        year=2006,
        title="Bundling as an optimal selling mechanism for a multiple-good monopolist",
        venue="Journal of Economic Theory 127(1)",
        used_for="The optimal menu for one additive bidder with two U[0,1] items "
        "(`mechanism=manelli_vincent`, revenue 0.549) in `classical_menus`.",
    ),
    Reference(
        key="pavlov2011optimal",
        authors="G. Pavlov",
        year=2011,
        title="Optimal Mechanism for Selling Two Goods",
        venue="The B.E. Journal of Theoretical Economics 11(1)",
        used_for="The optimal posted price 1/sqrt(3) for one unit-demand bidder with two U[0,1] "
        "items (`mechanism=pavlov`, revenue 2/(3 sqrt 3) = 0.3849) in `classical_menus`.",
    ),
    Reference(
        key="cole2013mechanism",
        authors="R. Cole, V. Gkatzelis, G. Goel",
        year=2013,
        title="Mechanism Design for Fair Division: Allocating Divisible Items without Payments",
        venue="Proceedings of the 14th ACM Conference on Electronic Commerce (EC)",
        used_for="The partial allocation mechanism (`mechanism=pa`): PF scaled by externality "
        "ratios, a truthful payment-free baseline of the `rpf_*` experiments.",
    ),
    Reference(
        key="zeng2024learning",
        authors="S. Zeng, S. Bhatt, E. Kreacic, P. Hassanzadeh, A. Koppel, S. Ganesh",
        year=2024,
        title="Learning Payment-Free Resource Allocation Mechanisms",
        venue="arXiv preprint arXiv:2311.10927",
        used_for="ExS-Net (`mechanism=exsnet`): softmax over agents plus a synthetic agent "
        "whose share is withheld; the learned baseline and time unit of the `rpf_*` "
        "experiments.",
        url="https://arxiv.org/abs/2311.10927",
    ),
    Reference(
        key="kuo2020proportionnet",
        authors="K. Kuo, A. Ostuni, E. Horishny, M. J. Curry, S. Dooley, P.-Y. Chiang, "
        "T. Goldstein, J. P. Dickerson",
        year=2020,
        title="ProportionNet: Balancing Fairness and Revenue for Auction Design with Deep Learning",
        venue="arXiv preprint arXiv:2010.06398",
        used_for="The ProportionNet-style baseline (`mechanism=proportionnet`) of `cert_fairness`.",
        url="https://arxiv.org/abs/2010.06398",
    ),
    Reference(
        key="daskalakis2017strong",
        authors="C. Daskalakis, A. Deckelbaum, C. Tzamos",
        year=2017,
        title="Strong Duality for a Multiple-Good Monopolist",
        venue="Econometrica 85(3)",
        used_for="The asymmetric setting v1 ~ U[4,16], v2 ~ U[4,7] (`env=1x2_asym`, optimal "
        "revenue 9.781), setting (d) of `lic_table1`.",
    ),
    Reference(
        key="xiao2019training",
        authors="K. Y. Xiao, V. Tjeng, N. M. Shafiullah, A. Madry",
        year=2019,
        title="Training for Faster Adversarial Robustness Verification via Inducing ReLU Stability",
        venue="International Conference on Learning Representations (ICLR)",
        used_for="The ReLU-stability regulariser that keeps MIP certificates fast "
        "(`auctionlab.solvers.bounds`).",
    ),
    Reference(
        key="gowal2018effectiveness",
        authors="S. Gowal, K. Dvijotham, R. Stanforth, R. Bunel, C. Qin, J. Uesato, "
        "R. Arandjelović, T. Mann, P. Kohli",
        year=2018,
        title="On the Effectiveness of Interval Bound Propagation for Training Verifiably "
        "Robust Models",
        venue="arXiv preprint arXiv:1810.12715",
        used_for="Interval bound propagation, the pre-activation bounds of the MIP encoding "
        "(`auctionlab.solvers.bounds`).",
        url="https://arxiv.org/abs/1810.12715",
    ),
    Reference(
        key="ehlers2017formal",
        authors="R. Ehlers",
        year=2017,
        title="Formal Verification of Piece-Wise Linear Feed-Forward Neural Networks",
        venue="Automated Technology for Verification and Analysis (ATVA)",
        used_for='The triangle ("Planet") LP relaxation of unstable ReLUs that tightens the '
        "MIP bounds (`auctionlab.solvers.bounds`).",
    ),
    Reference(
        key="martins2016softmax",
        authors="A. F. T. Martins, R. F. Astudillo",
        year=2016,
        title="From Softmax to Sparsemax: A Sparse Model of Attention and Multi-Label "
        "Classification",
        venue="Proceedings of the 33rd International Conference on Machine Learning (ICML)",
        used_for="Sparsemax, the allocation head of the certifiable RegretNet "
        "(`auctionlab.layers.sparsemax`).",
    ),
    Reference(
        key="hartford2018deep",
        authors="J. Hartford, D. R. Graham, K. Leyton-Brown, S. Ravanbakhsh",
        year=2018,
        title="Deep Models of Interactions Across Sets",
        venue="Proceedings of the 35th International Conference on Machine Learning (ICML)",
        used_for="Exchangeable matrix layers (`auctionlab.layers.exchangeable`) behind "
        "EquivariantNet.",
    ),
    Reference(
        key="maurer2009empirical",
        authors="A. Maurer, M. Pontil",
        year=2009,
        title="Empirical Bernstein Bounds and Sample Variance Penalization",
        venue="Proceedings of the 22nd Conference on Learning Theory (COLT)",
        used_for="The empirical Bernstein slack (Theorem 4) of the statistical certificate "
        "(`auctionlab.certify.statistical`).",
    ),
)

#: The ``cite`` of a reference row whose number auctionlab computes itself from a closed form
#: with no paper behind it (``m (n-1)/(n+1)`` for VCG); a theory source is cited by its key.
CLOSED_FORM = "closed_form"

#: Every entry by key, in the order the reference page lists them.
BIBLIOGRAPHY: dict[str, Reference] = {entry.key: entry for entry in _ENTRIES}


def resolve(key: str) -> Reference:
    """The entry of a citation key.

    Args:
        key: a key of :data:`BIBLIOGRAPHY` (``curry2020certifying``).

    Returns:
        Its :class:`Reference`.

    Raises:
        ConfigError: one line naming the unknown key and the valid keys.

    """
    try:
        return BIBLIOGRAPHY[str(key)]
    except KeyError:
        raise ConfigError(
            f"unknown citation key {key!r}; valid keys: {', '.join(BIBLIOGRAPHY)}"
        ) from None


def check_keys(keys: object, where: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Validate citation keys from a config: one key or a list of keys.

    Args:
        keys: a key (``str``) or a list of keys; ``None`` means none.
        where: what cites them, the start of the error message (``experiment curry_table1:
            experiment.cite``).
        extra: reserved values accepted besides the bibliography's keys (``closed_form``).

    Returns:
        The keys, in order.

    Raises:
        ConfigError: one line naming ``where``, the unknown key and the valid keys.

    """
    if keys is None:
        return []
    items = [keys] if isinstance(keys, str) else keys
    if not isinstance(items, list | tuple) or not all(isinstance(k, str) for k in items):
        raise ConfigError(f"{where}: expected a citation key or a list of keys, got {keys!r}")
    for key in items:
        if key not in BIBLIOGRAPHY and key not in extra:
            raise ConfigError(
                f"{where}: unknown citation key {key!r}; valid keys: "
                + ", ".join([*BIBLIOGRAPHY, *extra])
            )
    return list(items)


def citation(key: str) -> str:
    """The full one-line citation of ``key`` (:meth:`Reference.citation`)."""
    return resolve(key).citation()


def markdown() -> str:
    """The reference page (``docs/references.md``): one ``## <key>`` section per entry."""
    lines = [
        "# References",
        "",
        "auctionlab cites every paper by a stable key: `[key]` in prose, code comments and "
        "table notes, `cite: key` in experiment configs; each key below is also the anchor of "
        "its section (`references.md#<key>`).",
        "",
        "<!-- Generated by scripts/references_page.py from auctionlab/references.py; "
        "do not edit. -->",
    ]
    for entry in BIBLIOGRAPHY.values():
        lines += [
            "",
            f"## {entry.key}",
            "",
            entry.citation(),
            "",
            f"**Used for:** {entry.used_for}",
        ]
    return "\n".join(lines) + "\n"


#: A bare citation ``[key]``: not a link's text already, not followed by a link target.
BARE_CITATION = re.compile(r"(?<![`\[\w])\[([a-z]+\d{4}[a-z]+)\](?![(\[\]:])")
_FENCE = re.compile(r"^\s*(```|~~~)")


def link_citations(markdown: str, target: str = "references.md") -> str:
    """Every bare ``[key]`` of the bibliography becomes a link to its entry on ``target``.

    Code fences, inline code and image alt texts are left alone, and so is a key that is not
    in :data:`BIBLIOGRAPHY`.

    Args:
        markdown: a Markdown page.
        target: the references page relative to that page (``../references.md``).

    Returns:
        The page with ``[key](<target>#key)`` links.

    """

    def link(match: re.Match) -> str:
        key = match.group(1)
        return f"[{key}]({target}#{key})" if key in BIBLIOGRAPHY else match.group(0)

    out, fenced = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        if fenced or line.lstrip().startswith("!["):
            out.append(line)
            continue
        pieces = line.split("`")  # odd-numbered pieces are inline code
        pieces[::2] = [BARE_CITATION.sub(link, piece) for piece in pieces[::2]]
        out.append("`".join(pieces))
    return "\n".join(out)
