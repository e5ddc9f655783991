"""The dynamic batcher on its own: gathering, limits, the lone-request rule, failure isolation, draining."""

import asyncio

import numpy as np
import pytest

from leanvision.serve.batching import Batcher, BatcherClosed


def fake_infer(calls: list[int]):
    """Probabilities whose first entry is the image's first pixel / 255, so each answer names its image."""
    def infer(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if (images == 13).any():
            raise ValueError("pixel 13 breaks this model")
        probs = np.zeros((len(images), 2), np.float32)
        probs[:, 0] = images[:, 0, 0, 0] / 255
        return probs

    return infer


def image(value: int) -> np.ndarray:
    return np.full((1, 2, 2), value, np.uint8)


def test_queued_images_share_one_call_up_to_max_batch_size():
    calls = []

    async def run():
        batcher = Batcher(fake_infer(calls), max_batch_size=4, max_wait_ms=0)
        batcher.start()
        futures = [batcher.submit(image(i)) for i in range(10)]  # all queued before the worker first runs
        answers = await asyncio.gather(*futures)
        await batcher.close()
        return answers

    answers = asyncio.run(run())
    assert calls == [4, 4, 2]
    assert [round(float(a.probs[0]) * 255) for a in answers] == list(range(10))  # each gets its own row
    assert [a.batch_size for a in answers] == [4] * 8 + [2] * 2


def test_lone_request_does_not_wait_for_the_window():
    """max_wait_ms is 60 s: an image alone (nothing queued, nothing arriving) must still be answered at once."""
    calls = []

    async def run():
        batcher = Batcher(fake_infer(calls), max_batch_size=64, max_wait_ms=60_000)
        batcher.start()
        answer = await asyncio.wait_for(batcher.submit(image(7)), timeout=10)
        await batcher.close()
        return answer

    answer = asyncio.run(run())
    assert calls == [1] and answer.batch_size == 1


def test_waits_for_requests_still_arriving():
    """While another request is known to be on its way (`incoming`), the first image waits for it (up to the
    window), so both share one call."""
    calls = []

    async def run():
        batcher = Batcher(fake_infer(calls), max_batch_size=64, max_wait_ms=60_000)
        batcher.start()
        batcher.incoming += 1  # a request being read / decoded
        first = batcher.submit(image(1))
        await asyncio.sleep(0.05)
        second = batcher.submit(image(2))
        batcher.incoming -= 1
        answers = await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        await batcher.close()
        return answers

    answers = asyncio.run(run())
    assert calls == [2] and [a.batch_size for a in answers] == [2, 2]


def test_an_image_that_breaks_the_model_fails_alone():
    calls = []

    async def run():
        batcher = Batcher(fake_infer(calls), max_batch_size=8, max_wait_ms=0)
        batcher.start()
        futures = [batcher.submit(image(v)) for v in (1, 13, 3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close()
        return results

    ok1, failed, ok3 = asyncio.run(run())
    assert calls == [3, 1, 1, 1]  # the batch failed, then each image alone
    assert isinstance(failed, ValueError) and "pixel 13" in str(failed)
    assert round(float(ok1.probs[0]) * 255) == 1 and round(float(ok3.probs[0]) * 255) == 3


def test_close_drains_queued_images_and_refuses_new_ones():
    calls = []

    async def run():
        batcher = Batcher(fake_infer(calls), max_batch_size=2, max_wait_ms=0)
        batcher.start()
        futures = [batcher.submit(image(i)) for i in range(5)]
        await batcher.close()
        assert all(f.done() and not f.exception() for f in futures)
        with pytest.raises(BatcherClosed, match="not running"):
            batcher.submit(image(0))

    asyncio.run(run())
    assert calls == [2, 2, 1]


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_ms": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Batcher(lambda x: x, **kwargs)


def test_inline_runs_a_lone_image_on_the_loop_and_batches_on_the_model_thread():
    import threading

    threads = []

    def infer(images):
        threads.append((len(images), threading.current_thread().name))
        return np.zeros((len(images), 2), np.float32)

    async def run():
        batcher = Batcher(infer, max_batch_size=8, max_wait_ms=0)
        batcher.inline = True
        batcher.start()
        await batcher.submit(image(1))  # alone: on the event loop's thread
        await asyncio.gather(*[batcher.submit(image(i)) for i in range(3)])  # a batch: on the model thread
        await batcher.close()

    asyncio.run(run())
    assert threads[0] == (1, threading.main_thread().name)
    assert threads[1][0] == 3 and threads[1][1].startswith("leanvision-serve-model")
