Feature: a running fleet serves, reports and stays up, as test-001 describes its daemons
  One real local fleet (SmolLM2, one worker) for every scenario: the keeper's commands come and go, the queen,
  hive and worker stay.

  Background:
    Given a fleet of 1 "smollm2" worker applied on the local hive

  @test001-58 @test001-50
  Scenario: rbee infer answers and leaves the daemons running
    When I run "rbee infer -m smollm2 --max-tokens 8 --seed 3 Hello"
    Then rbee exits with 0
    And stdout is not empty
    And the worker is idle with the same pid as before

  @test001-8
  Scenario: a request to a warm fleet starts nothing and fetches nothing
    When I run "rbee infer -m smollm2 --max-tokens 4 Hi"
    Then rbee exits with 0
    And the worker is idle with the same pid as before
    And the hive's catalog is as it was
    And the queen recorded no apply and no start since the fleet came up

  @test001-34
  Scenario: the task API streams token events with their index, then done with the token count
    When I create a task for "smollm2" with 6 tokens and read its events
    Then the events are tokens numbered from 0, then one done event counting them

  @test001-12
  Scenario: the hive's health says it is up, its name and version
    When I ask the hive for /health
    Then it answers 200 with status "ok", name "local" and rbee's version

  @test001-27 @test001-28 @test001-30 @test001-32
  Scenario: the worker answers its readiness with its own credential only
    When I ask the worker for /v1/ready with its credential
    Then it answers 200 with ready true and state "idle"
    And without its credential it answers 401

  @test001-15 @test001-18 @test001-19 @test001-20 @test001-22
  Scenario: the model is in the hive's catalog, a gguf of its size, and pulling it again fetches nothing
    When I run "rbee models ls"
    Then rbee exits with 0
    And stdout shows smollm2 as gguf of 98.4 MB
    And stdout shows what its header says: "llama", "Q4_1", "135M" and "8,192"
    When I run "rbee models pull smollm2 --hive local"
    Then rbee exits with 0
    And stdout says smollm2 is in local's catalog
    And the hive's catalog is as it was

  @test001-53
  Scenario: a refusal has one error object with a message, a type, the parameter and a code
    When I ask the queen for a chat with model "nope"
    Then it answers 404 with an OpenAI error naming "nope", type "invalid_request_error", param "model", code "model_not_found"

  @test001-60
  Scenario: rbee status shows the worker group Ready
    When I run "rbee status"
    Then rbee exits with 0
    And stdout shows "workers smollm2" as Ready

  @test001-62
  Scenario: rbee logs follows a hive's log until Ctrl+C
    Given "rbee logs hive local -f -n 5" is running
    When the user presses Ctrl+C
    Then it printed the hive's log lines and exits with 0

  # test001-56 does not apply: rbee has no keeper config file to look for (each command names its hive.yaml and
  # state sits in RBEE_HOME), so there is no RBEE_CONFIG / user / system priority to test.
