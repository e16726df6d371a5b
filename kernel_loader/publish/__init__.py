"""Publishing built variants to a Hub: :mod:`.plan` (what a publish will do, and the API rule), :mod:`.checks`
(what a build folder must be), :mod:`.local` (a git repo under a local Hub root, :func:`publish_local`) and
:mod:`.remote` (a Hub through ``HfApi``)."""

from .checks import PublishRefused, check_version, metadata_version
from .local import LocalGitTarget, publish_local
from .plan import ApiRecord, FileAddition, HubTarget, PublishPlan, PublishResult, plan_publish
from .remote import RemoteHubTarget

__all__ = ["ApiRecord", "FileAddition", "HubTarget", "LocalGitTarget", "PublishPlan", "PublishRefused",
           "PublishResult", "RemoteHubTarget", "check_version", "metadata_version", "plan_publish", "publish_local"]
