"""The Gradio UI, a package of small rooms. ``app.py`` at the top level only builds and launches it.

Rooms, lowest first (no room imports one above it): ``common`` (settings, the hosted mode, errors a page
may show), ``budget`` (epsilon from the slider, the plan line), ``figures`` (epsilon in words, the measured
curves and their bands), ``noise_view`` (what the noise did to a mean), ``ledger_view`` (the ledger and the
captions), ``data_in`` (examples, uploads, thumbnails), ``runs`` (one runner for every registered method:
run, cancel, re-fit, the outputs), ``spread`` ("run it again": the spread of the noise; the base model), ``audit_panel``, ``session``
(forgetting a session and sweeping leftovers), ``layout`` (``build_demo``, the public API) and ``serve``.
This face re-exports every room's names, so ``from dphyper.app import X`` keeps working; a test that
replaces a name replaces it in the room that uses it.

Privacy in the app:
* public models, the benchmark curves and the public embedding map are loaded once per
  process (they hold no private data);
* everything about an upload lives in the session (``gr.State``): the decoded images, the
  ledger (one ``LedgerBook`` per tab, mutated in place: releases counted per image), the
  user's runs. Nothing private is kept at module level or logged;
* the shared public models are read-only while serving: sampling with a LoRA runs on a
  per-call copy of the UNet (``lora.lora_model_fn``); the audit's broken variants are
  arguments of its own code path, never patches of ``dphyper.privacy``;
* when a tab closes (``demo.unload``) or a session is idle for ``SESSION_TTL_S``, the
  server forgets the whole session, including every component's last value (thumbnails,
  file names, the exact-mean plot), not only the ``gr.State`` values;
* uploaded files are decoded once and deleted from the server right away; the
  thumbnails are an inline data URI, never a file; the app's own ``GRADIO_TEMP_DIR`` is
  emptied at start, ``delete_cache`` sweeps what Gradio keeps (DP outputs only: each
  run's folder holds the LoRA, samples and report) and the session sweeper deletes the empty
  temp files Gradio's upload parser leaves behind.
"""

from __future__ import annotations

from .common import (  # noqa: F401
    HOSTED_WARNING,
    MAX_FILE_MB,
    MAX_IMAGES,
    SESSION_TTL_S,
    TEMP_DIR,
    UserError,
    _PATH_RE,
    _evaluator,
    _lock,
    _models,
    example_names,
    hosted_mode,
    public_error,
)
from .budget import (  # noqa: F401
    _epsilon,
    methods_plan,
)
from .figures import (  # noqa: F401
    LABELS,
    _band,
    _colour,
    _curves,
    _fade,
    _label,
    curve_sets,
    default_curve_set,
    privacy_summary,
    quality_for,
    utility_figure,
)
from .noise_view import (  # noqa: F401
    _public_map,
    noise_figure,
)
from .ledger_view import (  # noqa: F401
    LEDGER_RULES,
    _caption,
    _ledger_markdown,
    _ledger_method,
)
from .data_in import (  # noqa: F401
    _LOAD_LOCKS,
    _LOAD_LOCKS_GUARD,
    _after_load,
    _delete_uploads,
    _load_lock,
    load_data,
    load_example,
    load_upload,
    thumbnails_html,
)
from .runs import (  # noqa: F401
    _RUN_LOCK,
    _config,
    _drive,
    _finish,
    _owner_agreement,
    _plot_point,
    _relay,
    _release,
    _require,
    _run,
    _run_dir,
    _session_lock,
    _start_run,
    _stop_outputs,
    _sweep_old_runs,
    _train,
    _train_one_call,
    one_shot_runner,
    refit_runner,
    stop_message,
    training_runner,
)
from .spread import (  # noqa: F401
    RERUN_MAX,
    rerun,
    rerun_cost,
    rerun_methods,
    run_base,
    run_base_compare,
    run_dpsgd,
    run_hypernet,
    runner,
)
from .audit_panel import (  # noqa: F401
    AUDIT_TEXT,
    _trials_label,
    run_audit_panel,
)
from .session import (  # noqa: F401
    _start_sweeper,
    _sweep_upload_leftovers,
    forget_idle_sessions,
    forget_session,
)
from .layout import (  # noqa: F401
    COLUMN_MIN_WIDTH,
    CSS,
    EXPLAIN,
    INTERNAL,
    build_demo,
    gallery_columns,
    public_api,
)
from .serve import (  # noqa: F401
    launch,
    prepare_temp_dir,
    warm_up,
)
