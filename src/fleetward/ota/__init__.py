"""Over-the-air updates: a TUF repository, signed releases, campaigns in waves.

The public face: releases (:mod:`.service`), campaigns (:mod:`.campaigns`;
their verbs carry the noun here: :func:`approve_campaign`, ...), the TUF
repository (:mod:`.repository`), the blob store, and the console's
campaign reads (:mod:`._views`: :func:`list_campaigns`,
:func:`campaign_status`). :mod:`.release` (release checks, versions) and
:mod:`.rollout` (waves and health gates) are pure and may be imported
directly; the tables stay inside this package.
"""

from fleetward.ota._posture import campaigns_waiting_review, newest_deployable
from fleetward.ota._views import (
    CAMPAIGN_STATES,
    DEVICE_STATUSES,
    CampaignRow,
    CampaignStatus,
    WaveProgress,
    campaign_status,
    list_campaigns,
)
from fleetward.ota.blobs import BlobStore, LocalBlobStore
from fleetward.ota.campaigns import (
    EMERGENCY_APPROVALS,
    Offer,
    campaign_device_pks,
    canary_verdict,
    create_campaign,
    get_campaign,
    on_verdict,
    succeeded_devices,
)
from fleetward.ota.campaigns import abort as abort_campaign
from fleetward.ota.campaigns import approve as approve_campaign
from fleetward.ota.campaigns import resume as resume_campaign
from fleetward.ota.fleet import (
    CampaignProgress,
    RunningDevice,
    campaigns_of_releases,
    devices_running,
    firmware_of,
    list_releases_of_tenant,
    note_running,
    recent_campaigns,
    release_ids_of_product,
    releases_by_id,
    releases_without,
    running_by_environment,
    running_counts,
)
from fleetward.ota.models import Campaign, Release, ReleaseReview
from fleetward.ota.repository import (
    OfflineKeys,
    ensure_product,
    ensure_repository,
    metadata_bytes,
    refresh_online_roles,
    role_keys,
    rotate_root,
    trusted_root,
)
from fleetward.ota.reviews import (
    ReviewItem,
    campaigns_at_review_gate,
    latest_review,
    record_review,
    review_dict,
    reviewable,
    reviews_of_release,
    waive_review,
)
from fleetward.ota.service import (
    approve_release,
    create_release,
    get_release,
    list_releases,
    signed_release,
    withdraw_release,
)

__all__ = [
    "CAMPAIGN_STATES",
    "DEVICE_STATUSES",
    "EMERGENCY_APPROVALS",
    "BlobStore",
    "Campaign",
    "CampaignProgress",
    "CampaignRow",
    "CampaignStatus",
    "LocalBlobStore",
    "Offer",
    "OfflineKeys",
    "Release",
    "ReleaseReview",
    "ReviewItem",
    "RunningDevice",
    "WaveProgress",
    "abort_campaign",
    "approve_campaign",
    "approve_release",
    "campaign_device_pks",
    "campaign_status",
    "campaigns_at_review_gate",
    "campaigns_of_releases",
    "campaigns_waiting_review",
    "canary_verdict",
    "create_campaign",
    "create_release",
    "devices_running",
    "ensure_product",
    "ensure_repository",
    "firmware_of",
    "get_campaign",
    "get_release",
    "latest_review",
    "list_campaigns",
    "list_releases",
    "list_releases_of_tenant",
    "metadata_bytes",
    "newest_deployable",
    "note_running",
    "on_verdict",
    "recent_campaigns",
    "record_review",
    "refresh_online_roles",
    "release_ids_of_product",
    "releases_by_id",
    "releases_without",
    "resume_campaign",
    "review_dict",
    "reviewable",
    "reviews_of_release",
    "role_keys",
    "rotate_root",
    "running_by_environment",
    "running_counts",
    "signed_release",
    "succeeded_devices",
    "trusted_root",
    "waive_review",
    "withdraw_release",
]
