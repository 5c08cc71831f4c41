"Shared pytest set-up: hypothesis never fails a test for being slow (CI machines are shared and their speed varies)"
import pytest, torch
from hypothesis import HealthCheck, settings

settings.register_profile('fastprune', deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile('fastprune')


@pytest.fixture(scope='module')
def one_thread():
    "Tiny CNNs: extra torch threads only add overhead and contention; restore the setting afterwards (opt in per module)"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
