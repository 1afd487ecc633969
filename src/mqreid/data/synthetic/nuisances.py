"""Optional nuisances beyond the camera models (off by default)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Nuisances:
    """Optional nuisances beyond the camera models, as in harder data (MSMT17 against Market-1501).

    The defaults add nothing and draw nothing, so a set without them is byte-identical to one rendered
    before they existed. A visit is a run of consecutive frames of one identity on one camera.

    Attributes:
        time_slots: illuminants per camera (time of day, lights on or off): slot 0 is the camera's own,
            each other slot changes its white balance, hue and brightness; every visit draws a slot.
        slot_strength: size of those changes (1: gains of sigma 0.15, hue up to +-0.35 rad, brightness
            sigma 0.3).
        outfits: clothing modes per identity (upper garment, trousers or skirt, hat, bag, backpack); every
            visit draws one, so an identity can look different on different cameras or days.
        burst: longest visit, in frames: its frames share view, pose, position, background, lighting and
            occluder (near-duplicates, as a tracker's boxes); visit lengths are drawn in 1..burst.
        lookalikes: share of identities dressed as another identity of the same split (their body, hair,
            skin and shoes stay their own).
        box_jitter: factor on the per-image jitter of the person's scale, position and feet row.
        count_spread: sigma of the log-normal weights spreading the images among identities (sets with
            split sizes only; 0.5 without nuisances): larger values give a longer tail.
    """

    time_slots: int = 1
    slot_strength: float = 1.0
    outfits: int = 1
    burst: int = 1
    lookalikes: float = 0.0
    box_jitter: float = 1.0
    count_spread: float = 0.5

    def tag(self) -> str:
        """The folder-name suffix of the nuisances that differ from the defaults ('' for none)."""
        short = {"time_slots": "ts", "slot_strength": "ss", "outfits": "of", "burst": "bu", "lookalikes": "la",
                 "box_jitter": "bj", "count_spread": "cs"}
        default = Nuisances()
        return "".join(f"_{short[k]}{v!r}" for k, v in vars(self).items() if v != getattr(default, k))


def _nuisances(value) -> Nuisances:
    """``value`` (None, a mapping or :class:`Nuisances`) as :class:`Nuisances`; a bad key or value raises a
    ValueError naming it."""
    valid = sorted(vars(Nuisances()))
    if value is None or isinstance(value, Nuisances):
        return value or Nuisances()
    if not isinstance(value, dict):
        raise ValueError(f"Synthetic: nuisances must be a mapping with keys from {valid}, got {value!r}")
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(f"Synthetic: nuisances.{unknown[0]} is not a nuisance; valid: {valid}")
    for key, v in value.items():
        kind = type(getattr(Nuisances(), key))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise ValueError(f"Synthetic: nuisances.{key} must be {'an integer' if kind is int else 'a number'}, "
                             f"got {v!r}")
    n = Nuisances(**{k: type(getattr(Nuisances(), k))(v) for k, v in value.items()})
    checks = {"time_slots": (n.time_slots >= 1, ">= 1"), "slot_strength": (n.slot_strength >= 0, ">= 0"),
              "outfits": (n.outfits >= 1, ">= 1"), "burst": (n.burst >= 1, ">= 1"),
              "lookalikes": (0 <= n.lookalikes <= 1, "in [0, 1]"), "box_jitter": (n.box_jitter >= 0, ">= 0"),
              "count_spread": (n.count_spread >= 0, ">= 0")}
    for key, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"Synthetic: nuisances.{key} must be {expected}, got {getattr(n, key)!r}")
    return n

