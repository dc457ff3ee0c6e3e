"""A site's samples as the model takes them: the one way every part of fedmm loads a site.

Read and validated (:mod:`common.sitedata`), served from the site's array cache when nothing
changed (:mod:`common.sitecache`), checked for enough usable rows, and with frozen pretrained
features attached when the model uses them (:mod:`common.features`). The caches live in the
site's state folder (:class:`~common.site_state.SiteState`).
"""

from __future__ import annotations

from pathlib import Path

from common.config import RunConfig
from common.features import model_inputs
from common.read_limits import DEFAULT_READ_LIMITS, ReadLimits
from common.site_state import SiteState
from common.sitecache import load_site_cached
from common.sitedata import SiteData, require_usable


def load_model_inputs(site_dir: Path, config: RunConfig, state: SiteState | None = None,
                      *, check_usable: bool = True,
                      limits: ReadLimits = DEFAULT_READ_LIMITS) -> SiteData:
    """``site_dir``'s usable samples, as :func:`common.models.build_model`'s model takes them,
    each file read under ``limits`` (a site's own, from its policy); ``state`` defaults to
    ``SITE_DIR/.fedmm``."""
    state = state or SiteState.of(site_dir)
    data = load_site_cached(site_dir, config.data, state.cache_dir, limits=limits)
    if check_usable:
        data = require_usable(data, config.data)
    return model_inputs(data, config.model, state.feature_dir,
                        dicom_window=config.data.dicom_window)
