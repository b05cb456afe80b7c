"""The analysts' API: ``MediaSearch(...).search(text=..., image=..., audio=...)``.

One query vector is built from any mix of inputs (``search.query``), checked
against the collection's model, and sent as ONE nearest-neighbour query; hits
come back grouped by source file with the best moment (``search.results``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from schemas import Kind, Modality, Settings, get_settings, spec
from schemas.extension import active_specs
from search.filters import Where, parse_where
from search.query import (
    KEYWORDS,
    QueryEncoder,
    QueryPart,
    collect_parts,
    keywords_for,
    needed_modalities,
    parts_vector,
    subtract_negative,
)
from search.results import SearchResults, hit_from_point, hit_from_points

# A video has two file-level points (vision and audio) that may rank above its
# moments inside a group: ask the store for that many extra points per file.
FILE_LEVEL_POINTS_PER_ITEM = 2


class ModelMismatchError(ValueError):
    """The query encoder's model is not the model that filled the collection."""


class MediaSearch:
    """Cross-modal search over one collection (the settings' alias, or ``collection=``).

    ``store`` and ``encoder`` may be handed in (tests, notebooks that already
    hold them); otherwise the store is opened on first use and the encoder is
    built from ``settings.preset`` on the first query that needs one (its towers
    load per modality on first use).
    Queries made only of ``vector=`` never load a model.

    One instance may serve many threads (a web server): the store serialises its
    engine calls (``search.backends.serial``) and the encoder is built once, under
    a lock (its towers are cached per process, under their own lock).
    """

    def __init__(self, settings: Settings | None = None, *, store: Any = None,
                 encoder: QueryEncoder | None = None, collection: str | None = None) -> None:
        base = settings or get_settings()
        self.settings = base.model_copy(update={"collection": collection}) if collection else base
        self._store = store
        self._owns_store = store is None
        self._encoder = encoder
        self._checked_model: str | None = None
        self._lock = threading.RLock()

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def store(self) -> Any:
        with self._lock:
            if self._store is None:
                from search.store import open_store

                self._store = open_store(self.settings)
            return self._store

    def close(self) -> None:
        """Close the store if this object opened it (an embedded store locks its folder)."""
        with self._lock:
            if self._owns_store and self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> MediaSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the query vector ----------------------------------------------------------------

    def query_vector(self, inputs: Mapping[str, Any], *, weights: Mapping[str, float] | None = None,
                     negative: Mapping[str, Any] | None = None,
                     negative_weight: float | None = None) -> np.ndarray:
        """The unit query vector ``search`` would send (inputs by keyword, as in ``search``)."""
        keywords = keywords_for(self.settings.home)
        parts = collect_parts(inputs, weights, keywords=keywords)
        negative_parts = _negative_parts(negative, keywords)
        if negative_weight is not None and not negative_parts:
            raise ValueError("negative_weight was given without a negative= input")
        encoder = self._encoder_for(needed_modalities([*parts, *negative_parts]))
        count_tokens = _token_counter() if encoder else None
        vector = parts_vector(parts, encoder, self.settings, count_tokens)
        if not negative_parts:
            return vector
        away = parts_vector(negative_parts, encoder, self.settings, count_tokens)
        lam = self.settings.negative_weight if negative_weight is None else negative_weight
        return subtract_negative(vector, away, lam)

    def _encoder_for(self, modalities: set[Modality]) -> QueryEncoder | None:
        """The encoder (None when only raw vectors are queried, so no model is touched)."""
        if not modalities:
            return None
        with self._lock:
            if self._encoder is None:
                self.check_model(_preset_model_id(self.settings.preset))  # before building
                from embed_workers.encoder import Encoder

                # Towers are built on first use, per modality, and cached per process.
                self._encoder = Encoder(self.settings.preset, settings=self.settings)
        self.check_model(self._encoder.model_id)
        return self._encoder

    def check_model(self, model_id: str) -> None:
        """Refuse to compare vectors of two different models."""
        if self._checked_model == model_id:
            return
        info = self.store.collection_info()
        stored = info.get("model_id")
        if stored != model_id:
            raise ModelMismatchError(
                f"the query model is {model_id!r} but collection {info.get('physical', '?')!r} "
                f"(alias {self.settings.collection!r}) holds vectors of {stored!r}; vectors of "
                f"different models are not comparable. Either search it with "
                f"{_preset_hint(stored)}, or search a collection built with {model_id!r} "
                f"(MediaSearch(collection=...) / mediabind search --collection)")
        self._checked_model = model_id

    # --- stored points -----------------------------------------------------------------------

    def point(self, point_id: str, *, with_vector: bool = False) -> Any:
        """One stored point (``search.backends.Point``: id, payload, vector) by its id;
        KeyError when the collection holds no such point, ValueError for a malformed id."""
        found = self.store.retrieve([point_id], with_vectors=with_vector)
        if not found:
            raise KeyError(f"no point {point_id} in {self.settings.collection!r}")
        return found[0]

    def stored_vector(self, point_id: str) -> np.ndarray:
        """A stored point's own vector: ``search(vector=...)`` with it is "more like this"."""
        return np.asarray(self.point(point_id, with_vector=True).vector, dtype=np.float32)

    # --- search ----------------------------------------------------------------------------

    def search(self, text: Any = None, image: Any = None, audio: Any = None, video: Any = None,
               depth: Any = None, thermal: Any = None, imu: Any = None, vector: Any = None, *,
               inputs: Mapping[str, Any] | None = None, weights: Mapping[str, float] | None = None, negative: Mapping[str, Any] | None = None,
               negative_weight: float | None = None,
               modalities: Iterable[Modality | str] | Modality | str | None = None,
               kinds: Iterable[Kind | str] | Kind | str | None = None,
               where: Mapping[str, Any] | Where | None = None, limit: int = 10, offset: int = 0,
               group_by_file: bool = True, moments: int = 1) -> SearchResults:
        """Search the collection with any mix of inputs; best files (or segments) first.

        Inputs (each a value or a list of values of one keyword):

        - ``text``: the text itself (str) or a ``Path`` to a text file;
        - ``image``, ``video``, ``audio``, ``depth``, ``thermal``, ``imu``: a file
          path (str or ``Path``), the file's ``bytes``, or a numpy array in the
          decoded layout (``schemas.MODALITIES[m].decoded``). ``audio=`` also takes a
          video file (its soundtrack); ``video=`` queries the picture only;
        - ``vector``: a raw 1024-d vector from this collection's model;
        - ``inputs``: the same by name, for any modality including the extensions
          registered with ``mediabind bind`` (``inputs={"radar": "scan.radar.npy"}``,
          a file, its bytes, or a float32 array of one view in its geometry).

        Files and bytes are decoded exactly as ingestion decodes them. An input of
        several segments becomes the renormalised mean of its segment vectors.
        Inputs are combined as in the ImageBind paper: each L2-normalised,
        multiplied by its weight (``weights={"image": 0.5, "audio": 0.5}``; default
        1.0 each), summed, renormalised.

        ``negative`` takes the same keywords (``{"text": "rain"}``) and moves the
        query away from them by vector arithmetic: ``q − λ·n``, renormalised, with
        λ = ``negative_weight`` (default ``settings.negative_weight``). We chose
        arithmetic over Qdrant's recommend/discovery API because it is one plain
        ANN query that every backend (edge, embedded client, server) answers the
        same way, it keeps the query inspectable (``query_vector``), and it
        composes with filters, grouping and pagination unchanged.

        Filters: ``modalities=`` (stored point modality: vision, audio, text, ...),
        ``kinds=`` (source file kind: image, video, audio, ...) and ``where=`` (the
        ``search.filters`` dict form); all must hold.

        ``group_by_file=True`` gives one ``Hit`` per source file: its score is the
        best of its points (file-level points included), its ``start_s``/``end_s``
        the best matching moment, and ``hit.moments`` the best ``moments``
        moments. ``group_by_file=False`` gives one hit per stored segment
        (file-level points left out). ``offset`` skips that many files/segments.
        """
        _check_paging(limit, offset, moments)
        query_where = build_where(where, modalities, kinds, segments_only=not group_by_file,
                                  home=self.settings.home)
        named = {"text": text, "image": image, "audio": audio, "video": video, "depth": depth,
                 "thermal": thermal, "imu": imu, "vector": vector}
        query = self.query_vector(_merged(named, inputs), weights=weights, negative=negative,
                                  negative_weight=negative_weight)
        if group_by_file:
            hits = self._grouped_hits(query, query_where, limit, offset, moments)
        else:
            hits = self._flat_hits(query, query_where, limit, offset)
        return SearchResults(hits, grouped=group_by_file, limit=limit, offset=offset,
                             collection=self.settings.collection)

    def _grouped_hits(self, query: np.ndarray, where: Where | None, limit: int, offset: int,
                      moments: int) -> list:
        # Qdrant's grouping has no offset: fetch offset + limit groups and drop the first ones.
        groups = self.store.search_groups(query, group_by="item_id", where=where,
                                          limit=offset + limit,
                                          group_size=moments + FILE_LEVEL_POINTS_PER_ITEM)
        page = [g for g in groups if g.hits][offset:offset + limit]
        return [hit_from_points(offset + i + 1, g.hits, moments) for i, g in enumerate(page)]

    def _flat_hits(self, query: np.ndarray, where: Where | None, limit: int, offset: int) -> list:
        points = self.store.search(query, where=where, limit=limit, offset=offset)
        return [hit_from_point(offset + i + 1, p) for i, p in enumerate(points)]


# --- argument checks and filters -------------------------------------------------------------


def _preset_model_id(preset: str) -> str:
    from embed_workers.model.presets import get_preset

    try:
        return get_preset(preset).model_id
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


def _preset_hint(model_id: Any) -> str:
    from embed_workers.model.presets import PRESETS

    names = [p.name for p in PRESETS.values() if p.model_id == model_id]
    if not names:
        return f"the model that built it ({model_id!r} is no preset we know)"
    return f"preset {names[0]!r} (MEDIABIND_PRESET={names[0]} or Settings(preset={names[0]!r}))"


def _token_counter() -> Callable[[str], int]:
    """CLIP token counts, so a long text query is chunked like ingested text."""
    from embed_workers.model.tokenizer import count_tokens

    return count_tokens


def _negative_parts(negative: Mapping[str, Any] | None,
                    keywords: Mapping[str, Any] | None = None) -> list[QueryPart]:
    if negative is None:
        return []
    if not isinstance(negative, Mapping):
        raise ValueError(f"negative is a dict like {{'text': 'rain'}}, got {type(negative).__name__}")
    return collect_parts(negative, role="negative", keywords=keywords or KEYWORDS)


def _check_paging(limit: Any, offset: Any, moments: Any) -> None:
    for name, value, least in (("limit", limit, 1), ("offset", offset, 0), ("moments", moments, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _names(values: Any, parse: Any, what: str) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    if not items:
        raise ValueError(f"{what}=: an empty list matches nothing")
    return [parse(v) for v in items]


def _merged(named: Mapping[str, Any], inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    both = {k for k, v in (inputs or {}).items() if v is not None and named.get(k) is not None}
    if both:
        raise ValueError(f"{sorted(both)} given both as keywords and in inputs=; give each once")
    return {**named, **{k: v for k, v in (inputs or {}).items() if v is not None}}


def _modality_name(value: Any, home: Any = None) -> str:
    if str(value) in active_specs(home):
        return str(value)  # a modality extension's points
    try:
        return spec(value).modality.value
    except ValueError as exc:
        extensions = list(active_specs(home))
        raise ValueError(f"{exc}{', ' + ', '.join(extensions) if extensions else ''}") from None


def _kind_name(value: Any, home: Any = None) -> str:
    if str(value) in active_specs(home):
        return str(value)
    try:
        return Kind(value).value
    except ValueError:
        names = ", ".join([k.value for k in Kind] + list(active_specs(home)))
        raise ValueError(f"unknown kind {value!r}; expected one of: {names}") from None


def build_where(where: Mapping[str, Any] | Where | None, modalities: Any, kinds: Any, *,
                segments_only: bool, home: Any = None) -> Where | None:
    """The store filter: ``where`` and the shortcuts, all of which must hold. ``home``
    adds the modality extensions registered there to the modalities and kinds known."""
    extra: dict[str, Any] = {}
    if modalities is not None:
        extra["modality"] = _names(modalities, lambda v: _modality_name(v, home), "modalities")
    if kinds is not None:
        extra["kind"] = _names(kinds, lambda v: _kind_name(v, home), "kinds")
    if segments_only:  # flat results are moments; file-level points have no time
        extra["segment_index"] = {"gte": 0}
    parsed = parse_where(where)
    shortcuts = parse_where(extra) if extra else None
    if parsed is None:
        return shortcuts
    return parsed.and_(shortcuts)
