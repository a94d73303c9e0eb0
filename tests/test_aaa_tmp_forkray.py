import ray
def test_a(ray_cluster):
    assert ray.is_initialized()
