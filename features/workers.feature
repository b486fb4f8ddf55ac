Feature: workers start, load, fail to load and stop as hive.yaml says, through rbee apply
  A real local hive whose synthetic engine takes 3 seconds to load (RBEE_SYNTHETIC_LOAD_SECONDS), so loading
  can be watched and timed out; the memory preflight and scaling down run the same real commands.

  Background:
    Given a local hive whose worker loads take 3 seconds, applied with 1 synthetic worker

  @test001-31 @test001-23 @test001-25
  Scenario: rbee apply shows a worker's loading progress until it is ready
    Then the first apply showed "0/1 ready, loading" with a percentage
    And the worker is idle

  @test001-33 @test001-42
  Scenario: a worker that does not load within workers[].load_timeout fails the apply, naming the setting
    When I apply the hive.yaml with 2 replicas and load_timeout 1s
    Then rbee exits with 1
    And stderr says "not ready after 1 s (workers[].load_timeout)"
    And stderr names the command that shows that worker's log

  @test001-24 @test001-38
  Scenario: a group whose KV cache cannot fit is refused before any process starts, with both numbers
    When I apply the hive.yaml with a gguf group of 256 slots of 1048576 tokens
    Then rbee exits with 1
    And stderr says it needs more memory than the hive has free, with both numbers
    And no worker process started for it

  @test001-26
  Scenario: a group asking for a device the hive does not have is refused before any process starts
    When I apply the hive.yaml with a gguf group on device cuda:0
    Then rbee exits with 1
    And stderr says "device cuda:0 was asked for and this hive has no such device"
    And no worker process started for it

  @test001-61
  Scenario: lowering replicas to 0 stops the worker
    When I apply the hive.yaml with 0 replicas
    Then rbee exits with 0
    And no worker process of the fleet is left
