//! The transaction code shared by both backends: the `impl_store!` macro
//! that writes every `Change` in one transaction and implements the role
//! traits over a concrete sqlx database.

/// Generates `impl Store for $store` over the concrete sqlx database `$db`.
/// `$store` must have a `pool: sqlx::Pool<$db>` field, an inherent
/// `async fn begin_write(&self) -> Result<sqlx::Transaction<'static, $db>, StoreError>`,
/// and an associated
/// `async fn lock_partitions(tx: &mut sqlx::Transaction<'static, $db>, keys: &[&str]) -> Result<(), StoreError>`
/// that makes writers of one webhook's queue take turns until commit
/// (sorted, deduplicated keys; a no-op where `begin_write` already
/// serialises every writer).
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use berth_core::event::{HealthEvent, HealthEventType, JobResult, Notification};
            use berth_core::operation::{Operation, OperationKind};
            use berth_core::pin::{Pin, PinHistoryEntry};
            use berth_core::runtime::RuntimeRecord;
            use berth_core::template::Template;

            use $crate::adapters::store::{
                change_from_row, db_err, encode_fields, encode_map, encode_template,
                health_event_from_row, job_result_from_row, notification_from_row,
                observation_from_row, op_time, operation_from_row, outbox_delete_sql,
                outbox_row_from_row, pin_entry_from_row, pin_from_row, plugin_from_row,
                plugin_update_from_row, rollout_from_row, rollout_target_from_row,
                runtime_from_row, sql, template_from_row, unique_err, webhook_delivery_from_row,
                Columns, OUTBOX_DELETE_CHUNK,
            };
            use $crate::ports::store::{
                Change, ChangeKind, ChangeRow, ChangeStore, EventFilter, EventStore, NewChangeRow,
                NewWebhookDelivery, Observation, OperationFilter, OutboxIdentity, OutboxMessage,
                OutboxRow, OutboxStore, PluginChange, PluginRecord, PluginStore, PluginUpdate,
                PluginUpdateFilter, RejectionChange, RolloutRow, RolloutStore, RolloutTarget,
                RuntimeFilter, RuntimePage, RuntimeStore, Store, StoreError, TemplateStore,
                WatchStore, WebhookDelivery, WebhookStore,
            };

            type Tx = sqlx::Transaction<'static, $db>;

            async fn upsert_operation(tx: &mut Tx, op: &Operation) -> Result<(), StoreError> {
                sqlx::query(sql::UPSERT_OPERATION)
                    .bind(&op.id)
                    .bind(op.runtime_id.as_deref())
                    .bind(op.template.as_deref())
                    .bind(op.kind.as_str())
                    .bind(op.source.as_str())
                    .bind(op.outcome.as_str())
                    .bind(op.error_code.as_deref())
                    .bind(op.error_message.as_deref())
                    .bind(op.started_at_ms)
                    .bind(op.finished_at_ms)
                    .bind(encode_map(&op.details)?)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_pin(tx: &mut Tx, pin: &Pin) -> Result<(), StoreError> {
                sqlx::query(sql::UPSERT_PIN)
                    .bind(&pin.template)
                    .bind(pin.digest.as_str())
                    .bind(pin.promoted_at_ms)
                    .bind(&pin.promoted_by)
                    .bind(pin.reason.as_deref())
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn insert_pin_history(
                tx: &mut Tx,
                entry: &PinHistoryEntry,
            ) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_PIN_HISTORY)
                    .bind(&entry.template)
                    .bind(entry.action.as_str())
                    .bind(entry.digest.as_ref().map(|d| d.as_str()))
                    .bind(entry.previous_digest.as_ref().map(|d| d.as_str()))
                    .bind(entry.at_ms)
                    .bind(&entry.by)
                    .bind(entry.reason.as_deref())
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_runtime(tx: &mut Tx, r: &RuntimeRecord) -> Result<(), StoreError> {
                let (code, message) = match &r.last_error {
                    Some(e) => (Some(e.code.as_str()), Some(e.message.as_str())),
                    None => (None, None),
                };
                sqlx::query(sql::UPSERT_RUNTIME)
                    .bind(&r.id)
                    .bind(&r.template)
                    .bind(r.status.as_str())
                    .bind(r.container_id.as_deref())
                    .bind(r.image_ref.as_deref())
                    .bind(r.image_digest.as_deref())
                    .bind(r.engine_endpoint.as_deref())
                    .bind(r.generation)
                    .bind(encode_map(&r.env)?)
                    .bind(r.created_at_ms)
                    .bind(r.updated_at_ms)
                    .bind(code)
                    .bind(message)
                    .bind(r.run_id.as_deref())
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn insert_health_event(tx: &mut Tx, e: &HealthEvent) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_HEALTH_EVENT)
                    .bind(&e.id)
                    .bind(&e.runtime_id)
                    .bind(e.event_type.as_str())
                    .bind(e.container_id.as_deref())
                    .bind(e.at_ms)
                    .bind(encode_map(&e.details)?)
                    .execute(&mut **tx)
                    .await
                    .map_err(|err| {
                        unique_err(err, || format!("health event {:?} is already stored", e.id))
                    })?;
                Ok(())
            }

            async fn insert_notification(tx: &mut Tx, n: &Notification) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_NOTIFICATION)
                    .bind(&n.id)
                    .bind(&n.notification_type)
                    .bind(&n.audience)
                    .bind(encode_map(&n.payload)?)
                    .bind(n.created_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(|err| {
                        unique_err(err, || format!("notification {:?} is already stored", n.id))
                    })?;
                Ok(())
            }

            /// Returns false (inserting nothing) when the job id already
            /// has a result.
            async fn insert_job_result(tx: &mut Tx, j: &JobResult) -> Result<bool, StoreError> {
                let inserted = sqlx::query(sql::INSERT_JOB_RESULT)
                    .bind(&j.job_id)
                    .bind(&j.runtime_id)
                    .bind(&j.kind)
                    .bind(j.success)
                    .bind(j.container_id.as_deref())
                    .bind(j.engine_endpoint.as_deref())
                    .bind(j.error_code.as_deref())
                    .bind(j.error_message.as_deref())
                    .bind(j.finished_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                Ok(inserted == 1)
            }

            async fn insert_outbox(tx: &mut Tx, m: &OutboxMessage) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_OUTBOX)
                    .bind(&m.stream)
                    .bind(&m.partition_key)
                    .bind(encode_fields(&m.fields)?)
                    .bind(m.created_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn insert_webhook_delivery(
                tx: &mut Tx,
                d: &NewWebhookDelivery,
            ) -> Result<(), StoreError> {
                sqlx::query(sql::INSERT_WEBHOOK_DELIVERY)
                    .bind(&d.id)
                    .bind(&d.webhook)
                    .bind(&d.notification_id)
                    .bind(&d.notification_type)
                    .bind(&d.body)
                    .bind(d.created_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(|err| {
                        unique_err(err, || {
                            format!("webhook delivery {:?} is already stored", d.id)
                        })
                    })?;
                Ok(())
            }

            async fn upsert_rollout(tx: &mut Tx, r: &RolloutRow) -> Result<(), StoreError> {
                sqlx::query(sql::UPSERT_ROLLOUT)
                    .bind(&r.id)
                    .bind(&r.template)
                    .bind(r.from_digest.as_deref())
                    .bind(&r.to_digest)
                    .bind(r.state.as_str())
                    .bind(i64::from(r.batch_size))
                    .bind(i64::from(r.max_failures))
                    .bind(i64::from(r.failures))
                    .bind(r.revert_pin)
                    .bind(r.source.as_str())
                    .bind(r.message.as_deref())
                    .bind(r.created_at_ms)
                    .bind(r.updated_at_ms)
                    .bind(r.plugin.as_deref())
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_rollout_target(
                tx: &mut Tx,
                rollout_id: &str,
                t: &RolloutTarget,
            ) -> Result<(), StoreError> {
                sqlx::query(sql::UPSERT_ROLLOUT_TARGET)
                    .bind(rollout_id)
                    .bind(&t.runtime_id)
                    .bind(i64::from(t.position))
                    .bind(t.state.as_str())
                    .bind(t.error.as_deref())
                    .bind(t.updated_at_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            /// Appends outbox messages and change-log rows, last in the
            /// transaction. On PostgreSQL the backend's `lock_changes`
            /// makes these writers take turns from here to commit, so both
            /// seqs are drawn in commit order: the relay's high-water mark
            /// (one for the whole outbox) and a stream reader's cursor can
            /// never pass a row that commits later. Taken last, after
            /// every row lock, it cannot be part of a wait cycle.
            async fn write_ordered_rows(
                tx: &mut Tx,
                outbox: &[OutboxMessage],
                rows: &[NewChangeRow],
            ) -> Result<(), StoreError> {
                if outbox.is_empty() && rows.is_empty() {
                    return Ok(());
                }
                <$store>::lock_changes(tx).await?;
                for m in outbox {
                    insert_outbox(tx, m).await?;
                }
                for r in rows {
                    sqlx::query(sql::INSERT_CHANGE)
                        .bind(r.at_ms)
                        .bind(r.kind.as_str())
                        .bind(&r.key)
                        .bind(r.runtime_id.as_deref())
                        .execute(&mut **tx)
                        .await
                        .map_err(db_err)?;
                }
                Ok(())
            }

            /// The one write path of `record` and `commit`. On `Err` the
            /// caller drops (rolls back) `tx`.
            async fn write_change(tx: &mut Tx, change: &Change<'_>) -> Result<(), StoreError> {
                // Locks first, before any row lock, in one order for all.
                // Each webhook's queue is a partition (`webhook:` + name);
                // the outbox is ordered by `write_ordered_rows`.
                let webhook_keys: Vec<String> = change
                    .webhook_deliveries
                    .iter()
                    .map(|d| format!("webhook:{}", d.webhook))
                    .collect();
                let mut keys: Vec<&str> = webhook_keys.iter().map(String::as_str).collect();
                keys.sort_unstable();
                keys.dedup();
                if !keys.is_empty() {
                    <$store>::lock_partitions(tx, &keys).await?;
                }
                // The one part that may refuse the change: before the rest.
                if let Some(job) = change.job_result {
                    if !insert_job_result(tx, job).await? {
                        return Err(StoreError::Conflict(format!(
                            "job {:?} already has a result",
                            job.job_id
                        )));
                    }
                }
                if let Some(runtime) = change.runtime {
                    upsert_runtime(tx, runtime).await?;
                }
                if let Some(op) = change.operation {
                    upsert_operation(tx, op).await?;
                }
                if let Some(p) = change.pin {
                    upsert_pin(tx, p.pin).await?;
                    insert_pin_history(tx, p.entry).await?;
                }
                if let Some(obs) = change.observation {
                    sqlx::query(sql::UPSERT_OBSERVATION)
                        .bind(&obs.template)
                        .bind(&obs.reference)
                        .bind(&obs.digest)
                        .bind(obs.observed_at_ms)
                        .execute(&mut **tx)
                        .await
                        .map_err(db_err)?;
                }
                match change.rejection {
                    Some(RejectionChange::Reject {
                        template,
                        digest,
                        reason,
                        at_ms,
                    }) => {
                        sqlx::query(sql::UPSERT_REJECTION)
                            .bind(template)
                            .bind(digest)
                            .bind(reason)
                            .bind(at_ms)
                            .execute(&mut **tx)
                            .await
                            .map_err(db_err)?;
                    }
                    Some(RejectionChange::Lift { template, digest }) => {
                        sqlx::query(sql::DELETE_REJECTION)
                            .bind(template)
                            .bind(digest)
                            .execute(&mut **tx)
                            .await
                            .map_err(db_err)?;
                    }
                    None => {}
                }
                match change.plugin {
                    Some(PluginChange::Put(p)) => {
                        let (code, message) = match &p.last_error {
                            Some(e) => (Some(e.code.as_str()), Some(e.message.as_str())),
                            None => (None, None),
                        };
                        sqlx::query(sql::UPSERT_PLUGIN)
                            .bind(&p.runtime_id)
                            .bind(&p.name)
                            .bind(&p.source)
                            .bind(&p.track)
                            .bind(p.installed_sha.as_deref())
                            .bind(p.installed_at_ms)
                            .bind(p.resolved_at_ms)
                            .bind(code)
                            .bind(message)
                            .execute(&mut **tx)
                            .await
                            .map_err(db_err)?;
                    }
                    Some(PluginChange::Delete { runtime_id, name }) => {
                        sqlx::query(sql::DELETE_PLUGIN)
                            .bind(runtime_id)
                            .bind(name)
                            .execute(&mut **tx)
                            .await
                            .map_err(db_err)?;
                    }
                    None => {}
                }
                if let Some(u) = change.plugin_update {
                    sqlx::query(sql::UPSERT_PLUGIN_UPDATE)
                        .bind(&u.id)
                        .bind(&u.runtime_id)
                        .bind(&u.plugin)
                        .bind(&u.track)
                        .bind(u.from_sha.as_deref())
                        .bind(&u.to_sha)
                        .bind(u.status.as_str())
                        .bind(u.created_at_ms)
                        .bind(u.updated_at_ms)
                        .execute(&mut **tx)
                        .await
                        .map_err(|err| {
                            unique_err(err, || {
                                format!(
                                    "plugin {:?} of runtime {:?} already has a pending update",
                                    u.plugin, u.runtime_id
                                )
                            })
                        })?;
                }
                if let Some(r) = change.rollout {
                    upsert_rollout(tx, r.rollout).await?;
                    for t in r.targets {
                        upsert_rollout_target(tx, &r.rollout.id, t).await?;
                    }
                }
                for e in change.health_events {
                    insert_health_event(tx, e).await?;
                }
                for n in change.notifications {
                    insert_notification(tx, n).await?;
                }
                for d in change.webhook_deliveries {
                    insert_webhook_delivery(tx, d).await?;
                }
                write_ordered_rows(tx, change.outbox, &change.change_rows()).await?;
                Ok(())
            }

            async fn commit(tx: Tx) -> Result<(), StoreError> {
                tx.commit().await.map_err(db_err)
            }

            /// Ends a transaction that decided to change nothing, releasing
            /// the SQLite write lock at once rather than when `tx` drops.
            async fn rollback(tx: Tx) -> Result<(), StoreError> {
                tx.rollback().await.map_err(db_err)
            }

            #[async_trait]
            impl TemplateStore for $store {
                async fn put_template(
                    &self,
                    template: &Template,
                    op: &Operation,
                ) -> Result<bool, StoreError> {
                    let doc = encode_template(template)?;
                    let mut tx = self.begin_write().await?;
                    let existed = sqlx::query(sql::TEMPLATE_EXISTS)
                        .bind(&template.name)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    sqlx::query(sql::UPSERT_TEMPLATE)
                        .bind(&template.name)
                        .bind(doc)
                        .bind(op_time(op))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    upsert_operation(&mut tx, op).await?;
                    let rows = NewChangeRow::for_write(
                        &[(ChangeKind::Template, template.name.as_str())],
                        op,
                    );
                    write_ordered_rows(&mut tx, &[], &rows).await?;
                    commit(tx).await?;
                    Ok(!existed)
                }

                async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
                    sqlx::query(sql::GET_TEMPLATE)
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| template_from_row(&row))
                        .transpose()
                }

                async fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
                    sqlx::query(sql::LIST_TEMPLATES)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(template_from_row)
                        .collect()
                }

                async fn delete_template(
                    &self,
                    name: &str,
                    op: &Operation,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let exists = sqlx::query(sql::TEMPLATE_EXISTS)
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    if !exists {
                        rollback(tx).await?;
                        return Ok(false);
                    }
                    let row = sqlx::query(sql::COUNT_LIVE_RUNTIMES_OF_TEMPLATE)
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let users = row.int("runtimes", "n")?;
                    if users > 0 {
                        let runtimes = if users == 1 { "runtime" } else { "runtimes" };
                        rollback(tx).await?;
                        return Err(StoreError::Conflict(format!(
                            "template {name:?} is used by {users} {runtimes} that {} not removed; \
                             remove {} first",
                            if users == 1 { "is" } else { "are" },
                            if users == 1 { "it" } else { "them" },
                        )));
                    }
                    sqlx::query(sql::DELETE_TEMPLATE)
                        .bind(name)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let unpinned = sqlx::query(sql::DELETE_PIN)
                        .bind(name)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .rows_affected();
                    upsert_operation(&mut tx, op).await?;
                    let mut named = vec![(ChangeKind::Template, name)];
                    if unpinned > 0 {
                        named.push((ChangeKind::Pin, name));
                    }
                    write_ordered_rows(&mut tx, &[], &NewChangeRow::for_write(&named, op)).await?;
                    commit(tx).await?;
                    Ok(true)
                }

                async fn get_pin(&self, template: &str) -> Result<Option<Pin>, StoreError> {
                    sqlx::query(sql::GET_PIN)
                        .bind(template)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| pin_from_row(&row))
                        .transpose()
                }

                async fn list_pins(&self) -> Result<Vec<Pin>, StoreError> {
                    sqlx::query(sql::LIST_PINS)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(pin_from_row)
                        .collect()
                }

                async fn seed_pin(
                    &self,
                    pin: &Pin,
                    entry: &PinHistoryEntry,
                    op: &Operation,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let has_history = sqlx::query(sql::PIN_HISTORY_EXISTS)
                        .bind(&pin.template)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    if has_history {
                        rollback(tx).await?;
                        return Ok(false);
                    }
                    upsert_pin(&mut tx, pin).await?;
                    insert_pin_history(&mut tx, entry).await?;
                    upsert_operation(&mut tx, op).await?;
                    let rows =
                        NewChangeRow::for_write(&[(ChangeKind::Pin, pin.template.as_str())], op);
                    write_ordered_rows(&mut tx, &[], &rows).await?;
                    commit(tx).await?;
                    Ok(true)
                }

                async fn unpin(
                    &self,
                    template: &str,
                    entry: &PinHistoryEntry,
                    op: &Operation,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let deleted = sqlx::query(sql::DELETE_PIN)
                        .bind(template)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .rows_affected();
                    if deleted == 0 {
                        rollback(tx).await?;
                        return Ok(false);
                    }
                    insert_pin_history(&mut tx, entry).await?;
                    upsert_operation(&mut tx, op).await?;
                    let rows = NewChangeRow::for_write(&[(ChangeKind::Pin, template)], op);
                    write_ordered_rows(&mut tx, &[], &rows).await?;
                    commit(tx).await?;
                    Ok(true)
                }

                async fn pin_history(
                    &self,
                    template: &str,
                    limit: u32,
                ) -> Result<Vec<PinHistoryEntry>, StoreError> {
                    sqlx::query(sql::PIN_HISTORY)
                        .bind(template)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(pin_entry_from_row)
                        .collect()
                }
            }

            #[async_trait]
            impl RuntimeStore for $store {
                async fn get_runtime(&self, id: &str) -> Result<Option<RuntimeRecord>, StoreError> {
                    sqlx::query(sql::GET_RUNTIME)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| runtime_from_row(&row))
                        .transpose()
                }

                async fn list_runtimes(
                    &self,
                    filter: &RuntimeFilter,
                ) -> Result<Vec<RuntimeRecord>, StoreError> {
                    let status = filter.status.map(|s| s.as_str());
                    let query = match (filter.template.as_deref(), status) {
                        (None, None) => sqlx::query(sql::LIST_RUNTIMES),
                        (Some(t), None) => sqlx::query(sql::LIST_RUNTIMES_BY_TEMPLATE).bind(t),
                        (None, Some(s)) => sqlx::query(sql::LIST_RUNTIMES_BY_STATUS).bind(s),
                        (Some(t), Some(s)) => {
                            sqlx::query(sql::LIST_RUNTIMES_BY_TEMPLATE_AND_STATUS)
                                .bind(t)
                                .bind(s)
                        }
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(runtime_from_row)
                        .collect()
                }

                async fn list_runtimes_page(
                    &self,
                    page: &RuntimePage,
                ) -> Result<Vec<RuntimeRecord>, StoreError> {
                    let text = sql::list_runtimes_page(
                        page.template.is_some(),
                        page.status.is_some(),
                        page.stale,
                        page.after.is_some(),
                        page.limit.is_some(),
                    );
                    let mut query = sqlx::query(&text);
                    if let Some(t) = &page.template {
                        query = query.bind(t.as_str());
                    }
                    if let Some(s) = page.status {
                        query = query.bind(s.as_str());
                    }
                    if let Some(a) = &page.after {
                        query = query.bind(a.as_str());
                    }
                    if let Some(l) = page.limit {
                        query = query.bind(i64::from(l));
                    }
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(runtime_from_row)
                        .collect()
                }

                async fn list_operations_before(
                    &self,
                    filter: &OperationFilter,
                    before: Option<&str>,
                ) -> Result<Vec<Operation>, StoreError> {
                    let kind = filter.kind.map(OperationKind::as_str);
                    let text = sql::list_operations(
                        filter.runtime_id.is_some(),
                        kind.is_some(),
                        before.is_some(),
                    );
                    let mut query = sqlx::query(&text);
                    if let Some(r) = &filter.runtime_id {
                        query = query.bind(r.as_str());
                    }
                    if let Some(k) = kind {
                        query = query.bind(k);
                    }
                    if let Some(b) = before {
                        query = query.bind(b);
                    }
                    query
                        .bind(i64::from(filter.limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(operation_from_row)
                        .collect()
                }

                async fn get_operation(&self, id: &str) -> Result<Option<Operation>, StoreError> {
                    sqlx::query(sql::GET_OPERATION)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| operation_from_row(&row))
                        .transpose()
                }

                async fn fail_in_progress_operations(
                    &self,
                    code: &str,
                    message: &str,
                    now_ms: i64,
                ) -> Result<Vec<Operation>, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let rows = sqlx::query(sql::FAIL_IN_PROGRESS_OPERATIONS)
                        .bind(code)
                        .bind(message)
                        .bind(now_ms)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    // RETURNING has no order of its own: oldest first, by seq.
                    let mut changed = rows
                        .iter()
                        .map(|row| Ok((row.int("operations", "seq")?, operation_from_row(row)?)))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    changed.sort_by_key(|(seq, _)| *seq);
                    let change_rows: Vec<NewChangeRow> = changed
                        .iter()
                        .flat_map(|(_, op)| NewChangeRow::for_write(&[], op))
                        .collect();
                    write_ordered_rows(&mut tx, &[], &change_rows).await?;
                    commit(tx).await?;
                    Ok(changed.into_iter().map(|(_, op)| op).collect())
                }

                async fn get_job_result(
                    &self,
                    job_id: &str,
                ) -> Result<Option<JobResult>, StoreError> {
                    sqlx::query(sql::GET_JOB_RESULT)
                        .bind(job_id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| job_result_from_row(&row))
                        .transpose()
                }
            }

            #[async_trait]
            impl PluginStore for $store {
                async fn get_plugin(
                    &self,
                    runtime_id: &str,
                    name: &str,
                ) -> Result<Option<PluginRecord>, StoreError> {
                    sqlx::query(sql::GET_PLUGIN)
                        .bind(runtime_id)
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| plugin_from_row(&row))
                        .transpose()
                }

                async fn list_plugins(
                    &self,
                    runtime_id: Option<&str>,
                ) -> Result<Vec<PluginRecord>, StoreError> {
                    let query = match runtime_id {
                        None => sqlx::query(sql::LIST_PLUGINS),
                        Some(r) => sqlx::query(sql::LIST_PLUGINS_OF_RUNTIME).bind(r),
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(plugin_from_row)
                        .collect()
                }

                async fn get_plugin_update(
                    &self,
                    id: &str,
                ) -> Result<Option<PluginUpdate>, StoreError> {
                    sqlx::query(sql::GET_PLUGIN_UPDATE)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| plugin_update_from_row(&row))
                        .transpose()
                }

                async fn pending_plugin_update(
                    &self,
                    runtime_id: &str,
                    plugin: &str,
                ) -> Result<Option<PluginUpdate>, StoreError> {
                    sqlx::query(sql::PENDING_PLUGIN_UPDATE)
                        .bind(runtime_id)
                        .bind(plugin)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| plugin_update_from_row(&row))
                        .transpose()
                }

                async fn list_plugin_updates(
                    &self,
                    filter: &PluginUpdateFilter,
                ) -> Result<Vec<PluginUpdate>, StoreError> {
                    let statement = sql::list_plugin_updates(
                        filter.status.is_some(),
                        filter.runtime_id.is_some(),
                        filter.plugin.is_some(),
                    );
                    let mut query = sqlx::query(&statement);
                    if let Some(status) = filter.status {
                        query = query.bind(status.as_str());
                    }
                    if let Some(runtime_id) = filter.runtime_id.as_deref() {
                        query = query.bind(runtime_id);
                    }
                    if let Some(plugin) = filter.plugin.as_deref() {
                        query = query.bind(plugin);
                    }
                    query
                        .bind(i64::from(filter.limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(plugin_update_from_row)
                        .collect()
                }

                async fn mark_plugins_resolved(
                    &self,
                    keys: &[(String, String)],
                    at_ms: i64,
                ) -> Result<(), StoreError> {
                    if keys.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write().await?;
                    for chunk in keys.chunks(sql::MARK_RESOLVED_CHUNK) {
                        let statement = sql::mark_plugins_resolved(chunk.len());
                        let mut query = sqlx::query(&statement).bind(at_ms);
                        for (runtime_id, name) in chunk {
                            query = query.bind(runtime_id).bind(name);
                        }
                        query.execute(&mut *tx).await.map_err(db_err)?;
                    }
                    commit(tx).await
                }
            }

            #[async_trait]
            impl Store for $store {
                async fn commit(&self, change: &Change<'_>) -> Result<(), StoreError> {
                    if change.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write().await?;
                    match write_change(&mut tx, change).await {
                        Ok(()) => commit(tx).await,
                        Err(e) => {
                            // Release the lock now; the error is the news.
                            let _ = rollback(tx).await;
                            Err(e)
                        }
                    }
                }
            }

            #[async_trait]
            impl EventStore for $store {
                async fn list_health_events_before(
                    &self,
                    filter: &EventFilter,
                    before: Option<&str>,
                ) -> Result<Vec<HealthEvent>, StoreError> {
                    let event_type = filter.event_type.map(HealthEventType::as_str);
                    let text = sql::list_health_events(
                        filter.runtime_id.is_some(),
                        event_type.is_some(),
                        before.is_some(),
                    );
                    let mut query = sqlx::query(&text);
                    if let Some(r) = &filter.runtime_id {
                        query = query.bind(r.as_str());
                    }
                    if let Some(t) = event_type {
                        query = query.bind(t);
                    }
                    if let Some(b) = before {
                        query = query.bind(b);
                    }
                    query
                        .bind(i64::from(filter.limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(health_event_from_row)
                        .collect()
                }

                async fn has_health_event(
                    &self,
                    runtime_id: &str,
                    container_id: &str,
                    event_type: HealthEventType,
                ) -> Result<bool, StoreError> {
                    Ok(sqlx::query(sql::HEALTH_EVENT_EXISTS)
                        .bind(runtime_id)
                        .bind(container_id)
                        .bind(event_type.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .is_some())
                }

                async fn list_notifications_before(
                    &self,
                    limit: u32,
                    before: Option<&str>,
                ) -> Result<Vec<Notification>, StoreError> {
                    let text = sql::list_notifications(before.is_some());
                    let mut query = sqlx::query(&text);
                    if let Some(b) = before {
                        query = query.bind(b);
                    }
                    query
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(notification_from_row)
                        .collect()
                }
            }

            #[async_trait]
            impl OutboxStore for $store {
                async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
                    sqlx::query(sql::OUTBOX_PENDING)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(outbox_row_from_row)
                        .collect()
                }

                async fn outbox_delete(&self, seqs: &[i64]) -> Result<(), StoreError> {
                    if seqs.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write().await?;
                    for chunk in seqs.chunks(OUTBOX_DELETE_CHUNK) {
                        let statement = outbox_delete_sql(chunk.len());
                        let mut query = sqlx::query(&statement);
                        for seq in chunk {
                            query = query.bind(*seq);
                        }
                        query.execute(&mut *tx).await.map_err(db_err)?;
                    }
                    commit(tx).await
                }

                async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::OUTBOX_FAILED)
                        .bind(seq)
                        .bind(error)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    commit(tx).await
                }

                async fn outbox_identity(&self) -> Result<OutboxIdentity, StoreError> {
                    let row = sqlx::query(<$store>::OUTBOX_IDENTITY)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_err)?;
                    Ok(OutboxIdentity {
                        id: row.text("outbox_identity", "id")?,
                        drawn: row.int("outbox_identity", "drawn")?,
                    })
                }

                async fn outbox_new_identity(&self) -> Result<String, StoreError> {
                    let id = uuid::Uuid::now_v7().simple().to_string();
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::OUTBOX_NEW_IDENTITY)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    commit(tx).await?;
                    Ok(id)
                }
            }

            #[async_trait]
            impl WebhookStore for $store {
                async fn webhook_head(
                    &self,
                    webhook: &str,
                ) -> Result<Option<WebhookDelivery>, StoreError> {
                    sqlx::query(sql::WEBHOOK_HEAD)
                        .bind(webhook)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| webhook_delivery_from_row(&row))
                        .transpose()
                }

                async fn webhook_delivered(&self, seq: i64, at_ms: i64) -> Result<(), StoreError> {
                    // One statement, in a write transaction: SQLite's
                    // `BEGIN IMMEDIATE` queues it behind other writers.
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::WEBHOOK_DELIVERED)
                        .bind(seq)
                        .bind(at_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    commit(tx).await
                }

                async fn webhook_failed(
                    &self,
                    seq: i64,
                    error: &str,
                    at_ms: i64,
                ) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::WEBHOOK_FAILED)
                        .bind(seq)
                        .bind(error)
                        .bind(at_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    commit(tx).await
                }

                async fn webhook_pending_count(
                    &self,
                    webhook: &str,
                    cap: u32,
                ) -> Result<u64, StoreError> {
                    let row = sqlx::query(sql::WEBHOOK_PENDING_COUNT)
                        .bind(webhook)
                        .bind(i64::from(cap))
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_err)?;
                    Ok(row.int("webhook_deliveries", "n")?.max(0) as u64)
                }

                async fn list_webhook_deliveries(
                    &self,
                    webhook: Option<&str>,
                    limit: u32,
                ) -> Result<Vec<WebhookDelivery>, StoreError> {
                    let limit = i64::from(limit);
                    let query = match webhook {
                        None => sqlx::query(sql::LIST_WEBHOOK_DELIVERIES).bind(limit),
                        Some(w) => sqlx::query(sql::LIST_WEBHOOK_DELIVERIES_OF)
                            .bind(w)
                            .bind(limit),
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(webhook_delivery_from_row)
                        .collect()
                }

                async fn prune_webhook_deliveries(
                    &self,
                    webhook: &str,
                    delivered_before_ms: i64,
                    keep: u32,
                ) -> Result<u64, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let pruned = sqlx::query(sql::PRUNE_WEBHOOK_DELIVERIES)
                        .bind(webhook)
                        .bind(delivered_before_ms)
                        .bind(i64::from(keep))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .rows_affected();
                    commit(tx).await?;
                    Ok(pruned)
                }
            }

            #[async_trait]
            impl ChangeStore for $store {
                async fn list_changes_after(
                    &self,
                    after: i64,
                    limit: u32,
                ) -> Result<Vec<ChangeRow>, StoreError> {
                    sqlx::query(sql::LIST_CHANGES_AFTER)
                        .bind(after)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(change_from_row)
                        .collect()
                }

                async fn change_bounds(&self) -> Result<Option<(i64, i64)>, StoreError> {
                    let row = sqlx::query(sql::CHANGE_BOUNDS)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_err)?;
                    let lo = row.opt_int("changes", "lo")?;
                    let hi = row.opt_int("changes", "hi")?;
                    Ok(lo.zip(hi))
                }

                async fn prune_changes_before(&self, before: i64) -> Result<u64, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let pruned = sqlx::query(sql::PRUNE_CHANGES)
                        .bind(before)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .rows_affected();
                    commit(tx).await?;
                    Ok(pruned)
                }
            }

            #[async_trait]
            impl WatchStore for $store {
                async fn get_observation(
                    &self,
                    template: &str,
                ) -> Result<Option<Observation>, StoreError> {
                    sqlx::query(sql::GET_OBSERVATION)
                        .bind(template)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .map(|row| observation_from_row(&row))
                        .transpose()
                }

                async fn is_rejected(
                    &self,
                    template: &str,
                    digest: &str,
                ) -> Result<bool, StoreError> {
                    Ok(sqlx::query(sql::IS_REJECTED)
                        .bind(template)
                        .bind(digest)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?
                        .is_some())
                }
            }

            #[async_trait]
            impl RolloutStore for $store {
                async fn get_rollout(
                    &self,
                    id: &str,
                ) -> Result<Option<(RolloutRow, Vec<RolloutTarget>)>, StoreError> {
                    let rows = sqlx::query(sql::GET_ROLLOUT)
                        .bind(id)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?;
                    let Some(first) = rows.first() else {
                        return Ok(None);
                    };
                    let rollout = rollout_from_row(first)?;
                    let mut targets = Vec::with_capacity(rows.len());
                    for row in &rows {
                        if let Some(target) = rollout_target_from_row(row)? {
                            targets.push(target);
                        }
                    }
                    Ok(Some((rollout, targets)))
                }

                async fn list_rollouts(
                    &self,
                    template: Option<&str>,
                    limit: u32,
                ) -> Result<Vec<RolloutRow>, StoreError> {
                    let limit = i64::from(limit);
                    let query = match template {
                        None => sqlx::query(sql::LIST_ROLLOUTS).bind(limit),
                        Some(t) => sqlx::query(sql::LIST_ROLLOUTS_BY_TEMPLATE)
                            .bind(t)
                            .bind(limit),
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(rollout_from_row)
                        .collect()
                }

                async fn active_rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
                    sqlx::query(sql::ACTIVE_ROLLOUTS)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?
                        .iter()
                        .map(rollout_from_row)
                        .collect()
                }
            }
        };
    };
}

pub(crate) use impl_store;
