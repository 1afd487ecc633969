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

    The v2 nuisances (camera groups, sessions, lighting that is not a global colour transform, camera
    topology, per-visit backgrounds), as in MSMT17's 12 outdoor and 3 indoor cameras filmed over days:

        groups: cameras per group, in camera order (``(12, 3)``: cameras 1-12, then 13-15); they must add up
            to ``num_cameras``. Each group has its own site (scene colours, hence backgrounds). Empty: one
            group.
        group_gap: strength of what else a group has of its own, folded into each of its cameras: a light
            spectrum (gains of sigma 0.2, hue up to +-0.4 rad, saturation sigma 0.25 at 1), a sensor (noise
            and blur factor of log-sigma 0.5, resolution loss), a viewpoint prior (its share of a camera's
            view probabilities: min(1, group_gap) x 0.7) and a person scale (log-sigma 0.08). 0: none.
        sessions: session illuminants per group (days x times of day), shared by all cameras of the group;
            each identity has a home session and every visit draws its session (1: no session light).
        session_strength: size of a session's colour change (1: gains of sigma 0.15 and a common brightness
            of sigma 0.2, hue up to +-0.35 rad) and of its shift of the light gradient.
        session_stay: probability that a visit is in its identity's home session (else one of the others).
        shadows: probability that a visit is crossed by a cast shadow (a soft-edged half-plane or band, its
            direction the session's sun direction, darkening person and background alike).
        exposure: sigma of the log light level of each session (and a third of it per visit), applied before
            the camera's tone curve: bright light clips highlights, dim light darkens. 0: level 1.
        low_light_noise: sensor noise gain in dim light: the noise is multiplied by
            ``1 + low_light_noise * (1 / level - 1)`` when the light level is below 1.
        walk: camera paths as walks on a camera adjacency graph: within a group the cameras stand on a ring,
            each linked to the ``walk`` nearest on either side; an identity's cameras are a walk that starts
            in a group with enough cameras and moves to an unvisited camera linked to the visited ones. 0: an
            identity's cameras are drawn at random.
        cross_group: probability that a walk's next camera is in another group (rare moves between groups).
        background_pool: backgrounds per group, drawn by every visit; 0: one background per camera.
    """

    time_slots: int = 1
    slot_strength: float = 1.0
    outfits: int = 1
    burst: int = 1
    lookalikes: float = 0.0
    box_jitter: float = 1.0
    count_spread: float = 0.5
    groups: tuple[int, ...] = ()
    group_gap: float = 0.0
    sessions: int = 1
    session_strength: float = 1.0
    session_stay: float = 1.0
    shadows: float = 0.0
    exposure: float = 0.0
    low_light_noise: float = 0.0
    walk: int = 0
    cross_group: float = 0.0
    background_pool: int = 0

    def tag(self) -> str:
        """The folder-name suffix of the nuisances that differ from the defaults ('' for none)."""
        short = {"time_slots": "ts", "slot_strength": "ss", "outfits": "of", "burst": "bu", "lookalikes": "la",
                 "box_jitter": "bj", "count_spread": "cs", "groups": "gr", "group_gap": "gg", "sessions": "se",
                 "session_strength": "sst", "session_stay": "sh", "shadows": "sd", "exposure": "ex",
                 "low_light_noise": "ln", "walk": "wk", "cross_group": "xg", "background_pool": "bp"}
        default = Nuisances()
        text = lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else repr(v)  # noqa: E731
        return "".join(f"_{short[k]}{text(v)}" for k, v in vars(self).items() if v != getattr(default, k))

    @property
    def lighting(self) -> bool:
        """Whether images get a per-visit lighting (shadows, light level, low-light noise)."""
        return self.shadows > 0 or self.exposure > 0 or self.low_light_noise > 0

    @property
    def v2(self) -> bool:
        """Whether any v2 nuisance is on (a visit then draws its session, background and lighting)."""
        default = Nuisances()
        return any(getattr(self, k) != getattr(default, k) for k in _V2)


_V2 = ("groups", "group_gap", "sessions", "session_strength", "session_stay", "shadows", "exposure",
       "low_light_noise", "walk", "cross_group", "background_pool")


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
    value = dict(value)
    for key, v in value.items():
        if key == "groups":
            if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") or not all(
                    isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in v):
                raise ValueError(f"Synthetic: nuisances.groups must be a list of camera counts >= 1, got {v!r}")
            value[key] = tuple(int(g) for g in v)
            continue
        kind = type(getattr(Nuisances(), key))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise ValueError(f"Synthetic: nuisances.{key} must be {'an integer' if kind is int else 'a number'}, "
                             f"got {v!r}")
        value[key] = kind(v)
    n = Nuisances(**value)
    checks = {"time_slots": (n.time_slots >= 1, ">= 1"), "slot_strength": (n.slot_strength >= 0, ">= 0"),
              "outfits": (n.outfits >= 1, ">= 1"), "burst": (n.burst >= 1, ">= 1"),
              "lookalikes": (0 <= n.lookalikes <= 1, "in [0, 1]"), "box_jitter": (n.box_jitter >= 0, ">= 0"),
              "count_spread": (n.count_spread >= 0, ">= 0"), "group_gap": (n.group_gap >= 0, ">= 0"),
              "sessions": (n.sessions >= 1, ">= 1"), "session_strength": (n.session_strength >= 0, ">= 0"),
              "session_stay": (0 <= n.session_stay <= 1, "in [0, 1]"), "shadows": (0 <= n.shadows <= 1, "in [0, 1]"),
              "exposure": (n.exposure >= 0, ">= 0"), "low_light_noise": (n.low_light_noise >= 0, ">= 0"),
              "walk": (n.walk >= 0, ">= 0"), "cross_group": (0 <= n.cross_group <= 1, "in [0, 1]"),
              "background_pool": (n.background_pool >= 0, ">= 0")}
    for key, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"Synthetic: nuisances.{key} must be {expected}, got {getattr(n, key)!r}")
    return n
