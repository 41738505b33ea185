"""Mechanisms: learned networks and classical rules behind one contract."""

from auctionlab.mechanisms.base import ClassicalMechanism, Mechanism, optimal_mechanism
from auctionlab.mechanisms.classical import VCG, FirstPrice, ManelliVincent, Pavlov, SecondPrice
from auctionlab.mechanisms.equivariant import EquivariantNet
from auctionlab.mechanisms.myerson import BundledMyerson, Myerson, MyersonItemwise
from auctionlab.mechanisms.pf import PartialAllocation, PFPAMixture, ProportionalFairness
from auctionlab.mechanisms.regretformer import RegretFormer
from auctionlab.mechanisms.regretnet import RegretNet
from auctionlab.mechanisms.regretnet_sparsemax import RegretNetSparsemax
from auctionlab.mechanisms.rochetnet import RochetNet
from auctionlab.mechanisms.rpfnet import ExSNet, RPFNet, SoftmaxNet

__all__ = [
    "PFPAMixture",
    "RPFNet",
    "VCG",
    "ExSNet",
    "PartialAllocation",
    "ProportionalFairness",
    "SoftmaxNet",
    "BundledMyerson",
    "ClassicalMechanism",
    "EquivariantNet",
    "FirstPrice",
    "ManelliVincent",
    "Mechanism",
    "Myerson",
    "MyersonItemwise",
    "Pavlov",
    "RegretFormer",
    "RegretNet",
    "RegretNetSparsemax",
    "RochetNet",
    "SecondPrice",
    "optimal_mechanism",
]
