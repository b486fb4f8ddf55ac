Feature: Cold start: from an empty machine to tokens streamed through the queen

  @test001-7 @test001-51
  Scenario: rbee apply brings up a worker and the queen streams its answer
    Given no workers are registered
    And a hive.yaml that asks for 1 worker of "smollm2" on the local hive
    When I run rbee apply with --yes
    Then the queen has registered 1 idle worker for "smollm2"
    When I send a streaming chat request for "smollm2" to the queen
    Then the worker streams tokens via SSE
    And inference completes successfully
    And rbee destroy leaves no rbee process
