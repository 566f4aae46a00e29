"""Routers: ours and every baseline behind one interface (:class:`Router`), one registry.

One module per family: :mod:`~prlib.routers.simple` (rules, lookup tables, the oracle),
:mod:`~prlib.routers.neighbours` (kNN), :mod:`~prlib.routers.neural` (MLPs, matrix
factorisation), :mod:`~prlib.routers.graph` (GraphRouter, the released design),
:mod:`~prlib.routers.contrastive` (RouterDC), :mod:`~prlib.routers.cascade` (HybridLLM,
FrugalGPT), :mod:`~prlib.routers.gmt` (GMTRouter) with :mod:`~prlib.routers.pairwise` (notebook 90's
Bradley-Terry baselines; both in the family ``"pairwise (notebook 90)"``) and
:mod:`~prlib.routers.personalized_v2` (ours, with :mod:`~prlib.routers.retrieval`; its ablations
and the superseded v1 of :mod:`~prlib.routers.personalized` are in the family ``"ablation"``). Every
torch router trains through
:func:`~prlib.routers.training.train_module`.

Adding a router is one class with a docstring, ``name``, ``family`` and ``@register``::

    from prlib.routers import Router, register

    @register
    class MyRouter(Router):
        \"\"\"What it does, in one paragraph (shown in the comparison tables).\"\"\"
        name, family = "My router", "personalised"
        def fit(self, train, val, *, progress=False): ...; return self
        def _raw_scores(self, requests): ...  # (n, n_llms)

``python -m prlib.routers`` lists the registered routers.
"""

from prlib.routers.base import (ABLATION, FAMILIES, PAIRWISE, History, Router, RouterError,
                                catalogue, description, get_router, register, registered,
                                unregister)
from prlib.routers.training import TorchRouter, train_module

# importing the family modules registers their routers, in table order
from prlib.routers import simple, neighbours, neural, graph, contrastive, cascade  # noqa: E402,F401,I001
from prlib.routers import reference  # noqa: E402,F401
from prlib.routers import personalized, personalized_v2, personalized_v3, gmt, pairwise  # noqa: E402,F401,I001
from prlib.routers.cascade import FrugalGPTRouter, HybridLLMRouter  # noqa: E402
from prlib.routers.contrastive import RouterDC  # noqa: E402
from prlib.routers.gmt import GMTRouter  # noqa: E402
from prlib.routers.pairwise import (BradleyTerryRouter, PerUserBradleyTerryRouter,  # noqa: E402
                                    PreviousTurnRouter)
from prlib.routers.graph import GraphRouterGNN, ReferenceDesignRouter  # noqa: E402
from prlib.routers.neighbours import KNNRouter, PerUserKNNRouter  # noqa: E402
from prlib.routers.neural import MFRouter, MLPRouter, UserMLPRouter  # noqa: E402
from prlib.routers.personalized import PersonalizedRouter  # noqa: E402
from prlib.routers.personalized_v2 import (ABLATIONS, PersonalizedRouterV2,  # noqa: E402
                                           V2Config)
from prlib.routers.personalized_v3 import V3_ABLATIONS, PersonalizedRouterV3  # noqa: E402
from prlib.routers.reference import (REFERENCE, CeilingRouter,  # noqa: E402
                                     StructuredReferenceRouter)
from prlib.routers.simple import (BestPerUserRouter, BestPerUserTaskRouter,  # noqa: E402
                                  BestSingleRouter, CheapestRouter, MostExpensiveRouter,
                                  OracleRouter, RandomRouter)

__all__ = [
    "FAMILIES", "Router", "RouterError", "TorchRouter", "History", "train_module", "catalogue",
    "description", "get_router", "register", "registered", "unregister", "RandomRouter",
    "CheapestRouter", "MostExpensiveRouter", "BestSingleRouter", "BestPerUserRouter",
    "BestPerUserTaskRouter", "OracleRouter", "KNNRouter", "PerUserKNNRouter", "MLPRouter",
    "UserMLPRouter", "MFRouter", "GraphRouterGNN", "ReferenceDesignRouter", "RouterDC",
    "HybridLLMRouter", "FrugalGPTRouter", "PersonalizedRouter",
    "PersonalizedRouterV2", "PersonalizedRouterV3", "V3_ABLATIONS", "V2Config", "ABLATIONS",
    "ABLATION",
    "PAIRWISE", "GMTRouter",
    "BradleyTerryRouter", "PerUserBradleyTerryRouter", "PreviousTurnRouter", "CeilingRouter",
    "StructuredReferenceRouter", "REFERENCE",
]
