//! `/fit` with a label field: train, save atomically, serve, and answer with the scores of the
//! training rows.

use super::apply::{answer_capacity, score_table, ANSWER_SLACK_BYTES};
use super::{skipped_note, table_refusal, DsdlResponse, Endpoint, Stages};
use crate::dsdl::envelope::{Envelope, Options};
use crate::dsdl::table::Table;
use crate::engine::training::{fit_labelled, labelled_from_table, FitPlan};
use crate::http::body::BodyBudget;
use crate::http::state::AppState;
use crate::model::train::TrainError;
use crate::model::ModelInfo;
use crate::util::validate_name;

/// `/fit` with a label field: trains as the request says, saves the model atomically as
/// `<algo>_<model_name>`, serves it from then on, and answers with its scores of the training
/// rows (what the stock container's fit-then-apply returns).
pub(super) fn fit_and_apply(
    state: &AppState,
    envelope: &Envelope,
    options: &Options,
    target: &str,
    budget: &mut BodyBudget,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> DsdlResponse {
    let fail = |what: String| DsdlResponse::error(Endpoint::Fit, what);
    if let Err(msg) = validate_name(target) {
        return fail(format!("target variable: {msg}"));
    }
    if ["src", "query", "rank", "_time"].contains(&target) {
        return fail(format!(
            "`{target}` is an input field, not a label; name the 0/1 label field before `from`: `| fit MLTKContainer algo=dnsexfil is_exfiltration from src query rank _time into app:NAME`"
        ));
    }
    let Some(store) = &state.config.model_store else {
        return fail("this service has no model store to save fitted models in; start it with --model-dir DIR (DNSEXFIL_MODEL_DIR)".into());
    };
    let name = match &options.algo {
        Some(algo) => format!("{algo}_{}", options.model_name),
        None => options.model_name.clone(),
    };
    if let Err(msg) = validate_name(&name) {
        return fail(format!(
            "the fitted model's name `<algo>_<model_name>`: {msg}"
        ));
    }
    if state.registry.is_pinned(&name) {
        return fail(format!(
            "`{name}` is a model this service was started with (built in or given with --model); a fit would replace it for every search that uses it. Fit into another name (`into app:OTHER`), adding base={name} to start from its weights"
        ));
    }
    // `apply M` looks for `<algo>_M` before `M` itself, so a fit saved as `<algo>_M` would take
    // the place of a model M the service was started with, for the searches that use M (the
    // ESCU detection applies its model with algo = model_name), under other output columns.
    let model_name = &options.model_name;
    if name != *model_name && state.registry.is_pinned(model_name) {
        return fail(format!(
            "`into app:{model_name}`: `{model_name}` is a model this service was started with (built in or given with --model); the fit would be saved as `{name}`, which `apply {model_name}` finds first, so it would replace `{model_name}` for every search that uses it. Fit into another name (`into app:OTHER`); algo={model_name} or base={model_name} starts from its weights"
        ));
    }
    // The same through a longer model name: `algo=detect` into `app:<x>_detect_...` saves
    // `detect_<x>_detect_...`, which the stock lookup of `apply detect_...` (algo = model_name)
    // finds first.
    if let Some(pinned) = state.registry.shadowed_pinned(&name) {
        return fail(format!(
            "the fit would be saved as `{name}`, which ends in `_{pinned}`: `apply {pinned}` looks for `<algo>_{pinned}` first (the stock container and earlier versions of this service do), so it could replace `{pinned}`, a model this service was started with, for every search that uses it. Fit into a name that does not end in `_{pinned}`"
        ));
    }
    let plan = match FitPlan::from_request(
        options.algo.as_deref(),
        &options.model_name,
        &envelope.params(),
        &state.registry,
    ) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    // One fit reads its table and trains at a time; the others are told at once, before they
    // take any more memory. The compute permit goes back: training may take minutes.
    let Ok(_slot) = state.fit_slot.try_acquire() else {
        return fail("another fit is training right now; run this fit again when it has finished (fits run one at a time)".into());
    };
    drop(permit);
    let table = match Table::parse_with_target(&envelope.data, state.config.max_rows, Some(target))
    {
        Ok(t) => t,
        Err(e) => return fail(table_refusal(e)),
    };
    if table.len() > state.config.max_fit_rows {
        tracing::warn!(
            rows = table.len(),
            limit_rows = state.config.max_fit_rows,
            "request refused: more rows than --max-fit-rows"
        );
        return fail(format!(
            "the fit has {} rows, more than the {} a fit may train on; sample the data first (e.g. `| sample 100000`) or raise --max-fit-rows (DNSEXFIL_MAX_FIT_ROWS)",
            table.len(),
            state.config.max_fit_rows
        ));
    }
    // Before training, not after: a fit that cannot be saved must not train for minutes first.
    if let Err(problem) = state.check_store() {
        return fail(format!(
            "{problem} ({}); nothing was trained: make the model store (--model-dir, DNSEXFIL_MODEL_DIR) a writable directory",
            store.dir().display()
        ));
    }
    // The answer (its scores of every training row) is counted before training, not after.
    let needed = answer_capacity(
        &state.suppressions,
        &table,
        table.len(),
        envelope.data.len(),
    ) + ANSWER_SLACK_BYTES;
    let room = budget.grow_to(needed, state);
    if let Some(refusal) = room.refusal(needed, state.config.limits.max_body_bytes_in_flight) {
        return fail(refusal);
    }
    let (labelled, windowing) =
        match labelled_from_table(&table, plan.schema, target, plan.window_secs) {
            Ok(l) => l,
            Err(e) => return fail(e.to_string()),
        };
    let positives = labelled.data.y.iter().filter(|&&y| y == 1.0).count();
    let sources = labelled
        .srcs
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let started = std::time::Instant::now();
    let info = ModelInfo {
        name: name.clone(),
        schema: plan.schema,
        target: target.to_string(),
        threshold: plan.threshold,
        source_file: format!("/fit of app:{}", options.model_name),
        source_sha256: crate::model::sha256_hex(envelope.data.as_bytes()),
        created_by: match &plan.base {
            Some(base) => format!(
                "dnsexfil {} /fit, fine-tuned from {} (sha256 {})",
                env!("CARGO_PKG_VERSION"),
                base.info.name,
                base.file_sha256
            ),
            None => format!("dnsexfil {} /fit", env!("CARGO_PKG_VERSION")),
        },
    };
    let mut plan = plan;
    plan.params.time_limit = Some(state.config.fit_time_limit);
    plan.params.stop_when = Some(&crate::http::state::STOPPING);
    tracing::info!(model = %name, schema = %plan.schema, rows = labelled.data.len(), positives, sources,
        base = plan.base.as_ref().map(|b| b.info.name.as_str()), "fit started");
    let fitted = match fit_labelled(&labelled, &plan, info, |e| {
        tracing::info!(model = %name, epoch = e.epoch, train_loss = e.train_loss,
            validation_loss = e.val_loss, validation_auc = e.val_auc, "fit epoch");
    }) {
        Ok(f) => f,
        Err(e @ TrainError::TimeLimit(_)) => {
            return fail(format!(
                "{e} (--fit-time-limit-secs, DNSEXFIL_FIT_TIME_LIMIT_SECS); nothing was saved and `{name}` is unchanged"
            ))
        }
        Err(e @ TrainError::Stopped) => {
            return fail(format!(
                "{e}; nothing was saved and `{name}` is unchanged: run the fit again once the service is back"
            ))
        }
        Err(e) => return fail(format!("{e}; nothing was saved")),
    };
    let path = match store.save(&name, &fitted.bytes) {
        Ok(p) => p,
        Err(e) => {
            return fail(format!(
                "the model trained but cannot be saved in {}: {e}; check that the model store is writable",
                store.dir().display()
            ))
        }
    };
    // From here on requests get the new model; those in flight finish on the one they hold.
    state.registry.remember(&path, None);
    let model = state.registry.insert(fitted.model);
    tracing::info!(model = %name, file = %path.display(), sha256 = %model.file_sha256,
        seconds = started.elapsed().as_secs_f64(), "fit saved and serving");
    let results = match score_table(
        &model,
        &state.suppressions,
        &table,
        envelope.data.len(),
        // The training rows themselves: scored as they were trained, from their own rows.
        None,
        &mut Stages::default(),
        || {},
    ) {
        Ok(r) => r,
        Err(msg) => return fail(msg),
    };
    let report = &fitted.report;
    DsdlResponse {
        status: "success",
        message: format!(
            "/fit done successfully; model `{name}` ({}, {}) trained on {} rank-1 rows ({positives} labelled 1) from {sources} sources {} in {:.1} s: best epoch {} of {}, validation ROC AUC {:.4} and TPR {:.1}% at 0.1% FPR on {}; saved and serving{}",
            plan.schema,
            match &plan.base {
                Some(b) => format!("fine-tuned from `{}`", b.info.name),
                None => "from scratch".to_string(),
            },
            labelled.data.len(),
            windowing.describe(),
            started.elapsed().as_secs_f64(),
            report.best.epoch,
            report.epochs_run,
            report.best.val_auc,
            fitted.validation_tpr_at_fpr_0_001 * 100.0,
            fitted.split.describe(),
            skipped_note(&table)
        ),
        results: Some(results),
    }
}
