"""Task bodies behind ``auctionlab <task>``."""

#: Every task: its module (``prepare(cfg)``, ``run(cfg)``, optional ``FLAGS``) and its help line.
TASKS: dict[str, tuple[str, str]] = {
    "train": ("auctionlab.tasks.train", "fit a learned mechanism (RegretNet, RochetNet...)"),
    "evaluate": ("auctionlab.tasks.evaluate", "stress-test a trained run or a classical mechanism"),
    "reproduce": ("auctionlab.tasks.reproduce", "run an experiment's sweep into a table (--list)"),
    "tune": ("auctionlab.tasks.tune", "search train hyperparameters with Optuna (resumable)"),
    "runs": ("auctionlab.tasks.runs", "list recent MLflow runs with their key metrics"),
    "certify": (
        "auctionlab.tasks.certify",
        "regret certificates: exact per profile (certifier=mip), holdout (certifier=statistical)",
    ),
    "audit": ("auctionlab.tasks.audit", "audit log of a combinatorial mechanism (env=ca_*)"),
    "replay": ("auctionlab.tasks.replay", "re-derive an audit log bit for bit (log=<file>)"),
}
