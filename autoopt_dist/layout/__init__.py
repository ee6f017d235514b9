"""How engines spread parameters over ranks, and the one place a step communicates."""

from .reducer import Reducer
from .side_table import ParamInfo, Role, SideTable, clean_name
from .views import Layout, LocalView, local_tensor, shard_group

__all__ = ["Layout", "LocalView", "ParamInfo", "Reducer", "Role", "SideTable", "clean_name", "local_tensor", "shard_group"]
