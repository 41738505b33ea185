"""Mechanisms: learned networks and classical rules behind one contract."""

from auctionlab.mechanisms.base import ClassicalMechanism, Mechanism
from auctionlab.mechanisms.classical import VCG, FirstPrice, ManelliVincent, Pavlov, SecondPrice
from auctionlab.mechanisms.myerson import BundledMyerson, Myerson, MyersonItemwise
from auctionlab.mechanisms.regretnet import RegretNet
from auctionlab.mechanisms.regretnet_sparsemax import RegretNetSparsemax
from auctionlab.mechanisms.rochetnet import RochetNet

__all__ = [
    "VCG",
    "BundledMyerson",
    "ClassicalMechanism",
    "FirstPrice",
    "ManelliVincent",
    "Mechanism",
    "Myerson",
    "MyersonItemwise",
    "Pavlov",
    "RegretNet",
    "RegretNetSparsemax",
    "RochetNet",
    "SecondPrice",
]
