"""Stage-2 rollouts split across ranks by group, and the global views paper Eq. 12 needs.

One epoch has ``G`` groups (conditions, by position) of ``K`` rollouts each: row ``p K + k`` is
rollout ``k`` of group ``p`` (group-major, as in a single process). Rank ``r`` of ``W`` rolls out
and scores the groups with ``p % W == r``. Every rank draws the initial noise of ALL rows from the
epoch's generator and keeps its own rows, so each rollout is the same whatever the world size.

The rewards are then gathered (:meth:`GroupShard.gather`) so that every rank computes the
advantages of Eq. 12 on the whole epoch: group means per sample id, the std over all rollouts
(as the released code does). In a single process (``W = 1``) every method is the identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from prefrestore.train import distributed


@dataclasses.dataclass(frozen=True)
class GroupShard:
    """This rank's share of one epoch's groups."""

    keys: tuple[str, ...]  # sample id of every group, by position (the advantage grouping key)
    group_size: int  # K rollouts per group
    rank: int  # this process
    world: int  # processes sharing the epoch

    @property
    def positions(self) -> list[int]:
        """Group positions this rank rolls out."""
        return list(range(self.rank, len(self.keys), self.world))

    @property
    def num_rows(self) -> int:
        """Rollouts of the whole epoch (all ranks)."""
        return len(self.keys) * self.group_size

    def rows(self) -> torch.Tensor:
        """Global row of each of this rank's rollouts, in its local order ``[len(positions) K]``."""
        k = self.group_size
        return torch.tensor([p * k + j for p in self.positions for j in range(k)], dtype=torch.long)

    def row_keys(self) -> list[str]:
        """The sample id of every global row."""
        return [key for key in self.keys for _ in range(self.group_size)]

    def row_groups(self) -> torch.Tensor:
        """The group position of every global row ``[num_rows]``."""
        return torch.arange(len(self.keys)).repeat_interleave(self.group_size)

    def per_rank(self, batch: int) -> int:
        """A global batch size (``sample_batch``, ``train_batch``) as this rank's share."""
        return max(1, batch // self.world)

    def gather(self, local: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-row values of this rank's rollouts (``[len(rows)]`` each) -> every row's, on every rank."""
        parts = distributed.gather((self.rows(), {k: v.detach().cpu() for k, v in local.items()}))
        out: dict[str, torch.Tensor] = {}
        for rows, values in parts:
            for name, v in values.items():
                if name not in out:
                    out[name] = torch.empty(self.num_rows, dtype=v.dtype)
                out[name][rows] = v
        return out

    def slots(self, global_rows: torch.Tensor) -> torch.Tensor:
        """For each row in ``global_rows``, its index among this rank's kept rows, or -1 (another rank's).

        Index ``i`` counts only rows of ``global_rows`` this rank owns, in their order there.
        """
        owner = torch.full((self.num_rows,), -1, dtype=torch.long)
        owner[self.rows()] = 1
        mine = owner[global_rows] >= 0
        out = torch.full((global_rows.numel(),), -1, dtype=torch.long)
        out[mine] = torch.arange(int(mine.sum()))
        return out

    def local(self, global_rows: torch.Tensor) -> torch.Tensor:
        """Local row (index into this rank's rollouts) of each row of ``global_rows`` this rank owns."""
        lookup = torch.full((self.num_rows,), -1, dtype=torch.long)
        lookup[self.rows()] = torch.arange(self.rows().numel())
        found = lookup[global_rows]
        return found[found >= 0]
