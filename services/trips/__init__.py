"""The trip service: rides from request to payment, coordinating the other five services.

Modules: `servicer` (the gRPC surface), `workflow` (the steps that call other
services), `domain` (the state machine and downstream keys), `notices` (what
people are told), `store` (trips + outbox, on either engine), `clients` (every call
to another service), `outbox` and `background` (delivery in the background).

Nothing is ever half-done in a way a retry cannot finish. Two tools make that
true: every downstream write carries a request_id derived from the trip
(`trips/<id>:invoice`, ...), so repeating a step repeats each call with the
same key and it takes effect once; and every step records its progress in
the trips database as soon as it is known, so a repeat skips what is done.

RequestTrip. The passenger is checked and the fare quoted, side by side;
then the trip is stored, in the internal state MATCHING (never returned by
GetTrip or ListTrips), its name fixed and its RequestTrip request_id
recorded. One call to drivers, AssignNearestDriver, then finds the nearest
AVAILABLE driver within the radius and puts it ON_TRIP for the trip, in one
transaction there (a driver another trip took meanwhile is passed over for
the next, so a free driver within the radius is always found). When none is
free, the trip is deleted and the answer is NO_DRIVER_AVAILABLE with no trip.
When one is, one transaction makes the trip DRIVER_ASSIGNED, queues its
notifications and stores the answer for AIP-155 replays. If anything fails
in between (drivers down, a crash), the MATCHING trip stays: a repeat with
the same request_id finds it and calls AssignNearestDriver again, which is
idempotent by the trip (it returns the driver already ON_TRIP for it), and
carries on, so it never assigns a second driver. A repeat that never comes
is handled by the janitor (`TripWorkflow.sweep_abandoned`, setting
`matching_timeout_seconds`, default 60): it asks drivers for the trip's
driver the same way, deletes the trip and queues the driver's release
(`<trip>:release`, sent by the outbox like a trip end's) in one transaction,
so no driver stays ON_TRIP for a trip nobody can see.

CompleteTrip. The first attempt fixes the drop-off time (so the invoice
request is the same on every attempt), then: CreateInvoice (`<trip>:invoice`)
and record the invoice on the trip; CreatePayment (`<trip>:payment`, the
trip's payment method) and record payment and payment_state; and finally, in
one transaction, COMPLETED with end_time, the receipt and the driver's release
queued (below). If billing or payments cannot be reached the
call fails with UNAVAILABLE naming the service, the trip stays IN_PROGRESS
with what was recorded, and a repeat (with or without the request_id)
continues from there: one invoice, one charge, and never COMPLETED without a
payment. A declined card is recorded (payment_state DECLINED) and completes
the trip. Billing prices the invoice from the trip's pickup and dropoff and
payments charges the invoice's amount; the trip adopts an invoice (one billing
already had for it included) or a payment only if it is for exactly the fare,
else the call fails FAILED_PRECONDITION (INVOICE_AMOUNT_MISMATCH,
INVOICE_MISMATCH, PAYMENT_AMOUNT_MISMATCH), logged as an error, with the trip
IN_PROGRESS and the stray invoice or payment not recorded on it. CancelTrip
records CANCELLED with its notifications and the driver's release queued, in
one transaction; it calls no other service.

The outbox. A step never calls the notification service, and a step that
ends a trip never waits for drivers: it writes what it owes them to the
`outbox` table in the same transaction as the state change, and a loop per
kind (`outbox.py`, started with the service, stopped in `on_stop`) sends
them: notifications with `request_id = <outbox id>`, the driver's release
(ReleaseTrip) with `<trip>:release`, many steps' rows in one batch call,
each loop backing off while its service is away. So a step never fails
because of notifications or drivers, and everything a committed step owes
is sent exactly once, even across restarts. The driver of a trip that ended
is AVAILABLE again a few milliseconds after the step answered (one linger
of the outbox, `outbox.LINGER`), or as soon as drivers is back.

Concurrency. Steps on one trip run one at a time (a lock per trip, and one
per RequestTrip request_id), across the replicas sharing the database: an
asyncio lock within a process, then the store's `hold`: on PostgreSQL an
advisory lock (`pg_advisory_xact_lock(hashtext(key))`) in a transaction of
its own, held while the step calls other services and commits its progress
on other connections; on SQLite a record lock on one byte of a lock file
next to the database (no transaction: one system call to take, one to let
go). Either is let go at once if the replica dies. The
local steps (Accept, Start) take the same lock, so none slips between
CancelTrip freeing the driver and recording the cancellation. The outbox
loop and the janitor run in every replica: each loop sends only the rows it
claimed (`FOR UPDATE SKIP LOCKED` on PostgreSQL, for 30 s, given back when it
stops or fails; a dead replica's are taken over when they expire), a pass
carrying the steps of about 10 ms (`outbox.LINGER`), and a
recipient's rows go out in order; a row sent twice anyway (a send outliving
its claim) carries the same request_id, so the notification service stores
and delivers it once. The janitor's sweep holds each trip it sweeps.
"""
